"""Shared fixtures: a fresh cluster per test, and a check that nothing leaks.

Every test ends with no worker process and no shared-memory segment of this
process left over: the autouse ``no_leaks`` fixture shuts distkernel down and
fails the test otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import distkernel as dk
from distkernel.core import config
from distkernel.store import reaper


def our_workers() -> list[psutil.Process]:
    """Worker processes started by this test process (and still running)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if "distkernel.engine.worker" in command and child.status() != "zombie":
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def our_segments() -> list[str]:
    return reaper.segments_of(os.getpid())


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """For tests only: wait for something another process does (a process exiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def kill_driver_after_first_line(tmp_path, source: str) -> tuple[int, str]:
    """Run ``source`` as a driver script, read its first printed line, then SIGKILL it."""
    script = tmp_path / "driver.py"
    script.write_text(source)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        prefix = f"{config.SEGMENT_PREFIX}{driver.pid}-"
        assert any(n.startswith(prefix) for n in os.listdir(config.SHM_DIR)), line
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    return driver.pid, line


def run_driver_script(tmp_path, source: str, *, timeout: float = 60,
                      env: dict[str, str] | None = None,
                      prelude: str = "") -> subprocess.CompletedProcess:
    """Run ``source`` (after ``prelude``) as a driver script: its definitions live in
    ``__main__``, as in a notebook. Fails the test with the script's output if it exits
    non-zero."""
    script = tmp_path / "driver_script.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent(source))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def segments_left_by(pid: int) -> list[str]:
    prefix = f"{config.SEGMENT_PREFIX}{pid}-"
    return [n for n in os.listdir(config.SHM_DIR) if n.startswith(prefix)]


@pytest.fixture(autouse=True)
def no_leaks():
    yield
    dk.shutdown()
    assert wait_until(lambda: not our_workers(), timeout=10), \
        f"worker processes left behind: {[p.pid for p in our_workers()]}"
    assert not our_segments(), f"shared-memory segments left behind: {our_segments()}"


@pytest.fixture
def cluster():
    """A fresh 2-worker local cluster."""
    info = dk.init(2)
    yield info
    dk.shutdown()


@pytest.fixture
def small_store():
    """A cluster whose store holds 8 MiB, to reach its limit quickly."""
    info = dk.init(2, object_store_memory=8 * 1024 * 1024)
    yield info
    dk.shutdown()


def shm_dir() -> str:
    return config.SHM_DIR
