"""A driver killed with SIGKILL in the middle of its work leaves nothing behind.

Each driver, a script or a real kernel, stores 1 GiB, runs a task that sleeps
with that gigabyte mapped, and keeps two workers busy returning large results
into a store so small that some of them are spilled to disk. At that moment it
is SIGKILLed: nobody can clean up but its workers, which notice that their
driver is gone. Within two seconds no worker may run any more and no file of
the driver may be left: no segment, no hidden lock, no spill folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from distkernel.core import config
from tests.conftest import process_alive, segments_left_by, wait_until
from tests.kernel_session import KernelSession

#: SPEC §3: no worker and no file outlives a SIGKILLed driver; "at once" is this long.
CLEAN_WITHIN = 2.0
NUM_WORKERS = 3

WORK = """
    import time
    import numpy as np
    import distkernel as dk

    @dk.remote
    def hold(values):
        time.sleep(60)

    @dk.remote
    def make(fill):
        return np.full(8 * 2**20 // 8, fill)

    stored = dk.put(np.zeros(2**27))  # 1 GiB of float64 (calloc: no pages touched here)
    running = hold.remote(stored)
    results = [make.remote(float(i)) for i in range(400)]

    def in_the_middle():
        status = dk.status()
        tasks = {w["current_task"] for w in status["workers"]}
        return "hold" in tasks and "make" in tasks and status["object_store"]["spilled_bytes"]

    while not in_the_middle():
        time.sleep(0.005)
"""

DRIVER = (f"import distkernel as dk\n"
          f"dk.init({NUM_WORKERS}, object_store_memory=2**30 + 64 * 2**20)\n"
          + textwrap.dedent(WORK)
          + 'print("stored, running, returning and spilling", flush=True)\n'
          + "time.sleep(60)\n")

CELL = f"""
%dist shutdown
%dist init -n {NUM_WORKERS} --store 1088MiB
{textwrap.dedent(WORK)}
"""


def files_of(pid: int, spill_dir: Path) -> dict[str, list[str]]:
    """Every file a driver with this pid made, by kind."""
    return {
        "segments": segments_left_by(pid),
        "lock": [n for n in os.listdir(config.SHM_DIR) if n.startswith(f".distkernel-{pid}-")],
        "spill folder": [n for n in os.listdir(spill_dir) if n.startswith(f"distkernel-{pid}-")],
    }


def files_left_by(pid: int, spill_dir: Path) -> list[str]:
    return [name for names in files_of(pid, spill_dir).values() for name in names]


def assert_has_every_kind_of_file(pid: int, spill_dir: Path) -> None:
    """Before the kill: the driver made each kind of file, so the checks look where it matters."""
    made = files_of(pid, spill_dir)
    assert all(made.values()), made


def workers_of(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children() if "distkernel.engine.worker" in
            " ".join(c.cmdline())]


class Killed:
    """A driver just SIGKILLed, its workers as they were, and where it spilled."""

    def __init__(self, pid: int, workers: list[psutil.Process], spill_dir: Path) -> None:
        self.pid = pid
        self.workers = workers
        self.spill_dir = spill_dir
        self.killed_at = time.monotonic()

    def leftovers(self) -> list[str]:
        alive = [f"worker {w.pid}" for w in self.workers if process_alive(w.pid)]
        return alive + files_left_by(self.pid, self.spill_dir)

    def assert_all_gone_soon(self) -> None:
        """Nothing is left ``CLEAN_WITHIN`` seconds after the kill (counted from the kill)."""
        left = self.killed_at + CLEAN_WITHIN - time.monotonic()
        try:
            assert wait_until(lambda: not self.leftovers(), timeout=max(left, 0.0)), \
                f"{CLEAN_WITHIN} s after driver {self.pid} was killed: {self.leftovers()}"
        finally:
            for worker in self.workers:  # a failed check must not leave them running
                try:
                    worker.kill()
                except psutil.NoSuchProcess:
                    pass


def start_driver(script: Path, spill_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, DISTKERNEL_SPILL_DIR=str(spill_dir)))


def workers_in_the_middle(driver: subprocess.Popen[str], spill_dir: Path) -> list[psutil.Process]:
    """Wait for the driver's line; its workers, once it is in the middle of its work."""
    line = driver.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "stored, running, returning and spilling", line
    workers = workers_of(driver.pid)
    assert len(workers) >= NUM_WORKERS
    assert_has_every_kind_of_file(driver.pid, spill_dir)
    return workers


@pytest.mark.parametrize("pair", range(25))
def test_a_sigkilled_driver_script_leaves_no_worker_and_no_file(tmp_path, pair):
    """Two drivers at a time (50 in all), killed together, so that neither starts (and
    sweeps what the other left) between a kill and its check."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    spill_dirs = [tmp_path / f"spill-{i}" for i in range(2)]
    for folder in spill_dirs:
        folder.mkdir()
    drivers = [start_driver(script, folder) for folder in spill_dirs]
    killed = []
    try:
        workers = [workers_in_the_middle(d, f) for d, f in zip(drivers, spill_dirs)]
        for driver, folder, its_workers in zip(drivers, spill_dirs, workers):
            driver.kill()
            killed.append(Killed(driver.pid, its_workers, folder))
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
            driver.stdout.close()  # type: ignore[union-attr]
    for each in killed:
        each.assert_all_gone_soon()


def kernel_in_the_middle(spill_dir: Path) -> tuple[KernelSession, list[psutil.Process]]:
    """A real kernel with the extension loaded, in the middle of the same work."""
    kernel = KernelSession("python3", env=dict(os.environ, DISTKERNEL_SPILL_DIR=str(spill_dir)))
    try:
        assert kernel.run("%load_ext distkernel").ok
        cell = kernel.run(CELL, timeout=60)
        assert cell.ok, cell.text()
        workers = workers_of(kernel.pid)
        assert len(workers) >= NUM_WORKERS
        assert_has_every_kind_of_file(kernel.pid, spill_dir)
    except BaseException:
        kernel.shutdown()
        raise
    return kernel, workers


@pytest.mark.parametrize("pair", range(25))
def test_a_sigkilled_kernel_leaves_no_worker_and_no_file(tmp_path, pair):
    """Two real kernels at a time (50 in all), brought to the middle of their work side by
    side, then killed together, so that neither starts (and sweeps) after the other's kill."""
    spill_dirs = [tmp_path / f"spill-{i}" for i in range(2)]
    for folder in spill_dirs:
        folder.mkdir()
    with ThreadPoolExecutor(2) as starting:
        futures = [starting.submit(kernel_in_the_middle, folder) for folder in spill_dirs]
        started = [future.exception() or future.result() for future in futures]
    kernels = [each for each in started if isinstance(each, tuple)]
    try:
        errors = [each for each in started if isinstance(each, BaseException)]
        if errors:
            raise errors[0]
        killed = []
        for (kernel, workers), folder in zip(kernels, spill_dirs):
            os.kill(kernel.pid, signal.SIGKILL)
            killed.append(Killed(kernel.pid, workers, folder))
        for kernel, _ in kernels:
            kernel.manager.provisioner.process.wait()  # type: ignore[union-attr]
        for each in killed:
            each.assert_all_gone_soon()
    finally:
        for kernel, _ in kernels:
            kernel.shutdown()
