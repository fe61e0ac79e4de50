"""A worker killed by each signal in each phase of a task: its task fails with a
``WorkerCrashedError`` that names the signal, the pool replaces the worker, and
nothing the dead worker was writing, reading or holding stays reserved.

Every death happens inside the worker itself (a real signal to its own pid, or
``os._exit``), at a known moment: while computing, while a large ``put`` or a
large result is being written into shared memory (a thread watches for the
store's file being open), while its result is pickled, or while it waits in
``get`` for a child task.
"""

from __future__ import annotations

import gc
import os
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.core import config
from tests.conftest import our_segments, process_alive, wait_until

MIB = 2**20
#: Large enough that its write into shared memory takes a while (tens of milliseconds).
LARGE = 128 * MIB
DEATHS = ["SIGKILL", "SIGSEGV", "SIGTERM", "SIGBUS", "SIGABRT", "exit 3"]

# -- inside the worker ------------------------------------------------------------------------

def die(how: str) -> None:
    """End this process by ``how`` (a signal name, or ``exit 3``), leaving no core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if how == "exit 3":
        os._exit(3)
    os.kill(os.getpid(), getattr(signal, how))
    time.sleep(30)  # not reached: the default action of each of these signals ends us


def die_once(condition: Callable[[], bool], how: str) -> None:
    """Die from a thread as soon as ``condition()`` holds, whatever the task is doing."""

    def watch() -> None:
        while not condition():
            time.sleep(0.0002)
        die(how)

    threading.Thread(target=watch, daemon=True).start()


def writing_shared_memory() -> bool:
    """True while this process has a file of the store open: a worker writes a large value
    (a put or a result) through such a file, into room the driver lent it."""
    prefix = os.path.join(config.SHM_DIR, config.SEGMENT_PREFIX)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def compute_then_die(how: str) -> int:
    total = 0
    for i in range(400_000):
        total += i * i
        if i == 200_000:
            die(how)
    return total


def put_while_dying(how: str) -> str:
    die_once(writing_shared_memory, how)
    ref = dk.put(np.ones(LARGE // 8))
    return f"the put of {ref} was over before the kill came"


class DiesWhenPickled:
    """A value whose pickling ends the process (a C extension crashing in __reduce__)."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> Any:
        die(self.how)


def return_what_dies_when_pickled(how: str) -> list[Any]:
    return [np.ones(LARGE // 8), DiesWhenPickled(how)]


def return_large_while_dying(how: str) -> np.ndarray:
    die_once(writing_shared_memory, how)
    return np.ones(LARGE // 8)


@dk.remote
def slow_child(marker: str) -> np.ndarray:
    open(marker, "w").close()
    time.sleep(0.3)
    return np.ones(4 * MIB // 8)  # large: stored in shared memory, wanted by nobody


def wait_for_child_then_die(how: str, marker: str) -> np.ndarray:
    die_once(lambda: os.path.exists(marker), how)  # the child runs: we wait in get()
    return dk.get(slow_child.remote(marker))


def retried_then_die(how: str, attempts: str) -> np.ndarray:
    open(os.path.join(attempts, str(os.getpid())), "w").close()
    return return_large_while_dying(how)


def put_then_die(how: str) -> None:
    dk.put(np.ones(4 * MIB // 8))
    die(how)


def read_then_die(how: str, values: np.ndarray) -> None:
    print("read", values[0])  # any message reports the view of the argument to the driver
    die(how)


@dk.remote
def where() -> int:
    return os.getpid()


@dk.remote
def where_slowly() -> int:
    time.sleep(0.05)  # long enough that idle workers share the tasks, none prefetched
    return os.getpid()


# -- in the driver ----------------------------------------------------------------------------

def words_for(how: str) -> str:
    """How the error must name the death: a signal by name, never a negative number."""
    return "exit code 3" if how == "exit 3" else f"signal {how}"


def pool_pids() -> set[int]:
    return {w["pid"] for w in dk.status()["workers"]
            if w["actor_id"] is None and w["state"] != "dead"}


def pool_idle() -> bool:
    status = dk.status()
    return not status["queued_tasks"] and not any(w["current_task"] for w in status["workers"])


def used_bytes() -> int:
    return dk.status()["object_store"]["used_bytes"]


def pool_ready(size: int) -> bool:
    workers = [w for w in dk.status()["workers"] if w["actor_id"] is None]
    return len(workers) == size and all(w["state"] == "idle" for w in workers)


def assert_pool_healed(dead_pid: int, size: int = 2) -> None:
    """The dead worker is gone, and the pool, its size again, runs new tasks on every worker,
    the replacement included."""
    assert wait_until(lambda: not process_alive(dead_pid), timeout=5)
    assert wait_until(lambda: pool_ready(size), timeout=5), dk.status()["workers"]
    pool = pool_pids()
    assert dead_pid not in pool
    ran_on = set(dk.get([where_slowly.remote() for _ in range(2 * size)], timeout=30))
    assert ran_on == pool


def assert_nothing_left_reserved(baseline: int) -> None:
    """Once its refs are gone, the store counts what it did before, and every chunk is wholly
    free: giving free chunks back leaves no file of this cluster in shared memory."""
    gc.collect()
    assert wait_until(pool_idle, timeout=5)
    assert wait_until(lambda: used_bytes() == baseline, timeout=1), dk.status()["object_store"]
    backend = runtime.engine()
    with backend.lock:
        backend.memory.arena.trim()
    assert wait_until(lambda: not our_segments(), timeout=2), our_segments()


def crash_pid(error: BaseException) -> int:
    found = re.search(r"\(pid (\d+)\)", str(error))
    assert found, f"the error does not name the dead worker's pid: {error}"
    return int(found.group(1))


# -- the table --------------------------------------------------------------------------------

def computing(how: str, tmp: str) -> dk.ObjectRef:
    return dk.remote(max_retries=0)(compute_then_die).remote(how)


def putting(how: str, tmp: str) -> dk.ObjectRef:
    return dk.remote(max_retries=0)(put_while_dying).remote(how)


def pickling_its_result(how: str, tmp: str) -> dk.ObjectRef:
    return dk.remote(max_retries=0)(return_what_dies_when_pickled).remote(how)


def writing_its_result(how: str, tmp: str) -> dk.ObjectRef:
    return dk.remote(max_retries=0)(return_large_while_dying).remote(how)


def waiting_in_get(how: str, tmp: str) -> dk.ObjectRef:
    marker = os.path.join(tmp, "child-started")
    return dk.remote(max_retries=0)(wait_for_child_then_die).remote(how, marker)


PHASES = [
    pytest.param(computing, id="computing"),
    pytest.param(putting, id="putting"),
    pytest.param(pickling_its_result, id="pickling-result"),
    pytest.param(writing_its_result, id="writing-result"),
    pytest.param(waiting_in_get, id="waiting-in-get"),
]


@pytest.mark.parametrize("how", DEATHS)
@pytest.mark.parametrize("phase", PHASES)
def test_a_worker_killed_in_each_phase_fails_its_task_and_is_replaced(cluster, tmp_path,
                                                                      phase, how):
    baseline = used_bytes()
    ref = phase(how, str(tmp_path))
    with pytest.raises(dk.WorkerCrashedError, match=words_for(how)) as info:
        dk.get(ref, timeout=30)
    assert not re.search(r"(signal|code) -\d", str(info.value))
    dead_pid = crash_pid(info.value)
    del ref, info
    assert_pool_healed(dead_pid)
    assert_nothing_left_reserved(baseline)


def test_a_crash_is_retried_then_reported_with_its_signal(cluster, tmp_path):
    baseline = used_bytes()
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    task = dk.remote(max_retries=2)(retried_then_die)
    with pytest.raises(dk.WorkerCrashedError, match="signal SIGSEGV") as info:
        dk.get(task.remote("SIGSEGV", str(attempts)), timeout=30)
    assert "after 2 retries" in str(info.value)
    assert len(list(attempts.iterdir())) == 3  # three workers, each killed writing the result
    dead_pid = crash_pid(info.value)
    del info
    assert_pool_healed(dead_pid)
    assert_nothing_left_reserved(baseline)


def test_what_a_task_put_before_its_worker_died_is_freed(cluster):
    baseline = used_bytes()
    with pytest.raises(dk.WorkerCrashedError, match="signal SIGKILL"):
        dk.get(dk.remote(max_retries=0)(put_then_die).remote("SIGKILL"), timeout=30)
    assert_nothing_left_reserved(baseline)


def test_a_large_argument_a_dead_worker_was_reading_is_freed(cluster):
    baseline = used_bytes()
    values = dk.put(np.ones(4 * MIB // 8))
    with pytest.raises(dk.WorkerCrashedError, match="signal SIGSEGV"):
        dk.get(dk.remote(max_retries=0)(read_then_die).remote("SIGSEGV", values), timeout=30)
    del values
    assert_nothing_left_reserved(baseline)


# -- actors -----------------------------------------------------------------------------------

@dk.remote
class Ledger:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    def add(self, entry: Any) -> int:
        self.entries.append(entry)
        return len(self.entries)

    def pid(self) -> int:
        return os.getpid()

    def crash_midway(self, how: str) -> int:
        return compute_then_die(how)


def actor_died(ref: dk.ObjectRef) -> str:
    """The ActorDiedError a call's get raises (its message), or a failure if it gives any
    value."""
    with pytest.raises(dk.ActorDiedError) as info:
        dk.get(ref, timeout=30)
    return str(info.value)


def ran_or_died(ref: dk.ObjectRef) -> Any:
    """A call's value, or None if it raised ActorDiedError."""
    try:
        return dk.get(ref, timeout=30)
    except dk.ActorDiedError:
        return None


@pytest.mark.parametrize("how", DEATHS)
def test_an_actor_killed_mid_call_fails_that_call_and_every_later_one(cluster, how):
    baseline = used_bytes()
    ledger = Ledger.remote()
    pid = dk.get(ledger.pid.remote(), timeout=30)
    crashing = ledger.crash_midway.remote(how)
    pending = [ledger.add.remote(i) for i in range(3)]
    assert words_for(how) in actor_died(crashing)
    assert all(words_for(how) in actor_died(call) for call in pending)
    assert words_for(how) in actor_died(ledger.add.remote("later"))
    del crashing, pending, ledger
    assert wait_until(lambda: not process_alive(pid), timeout=5)
    assert dk.get(where.remote(), timeout=30) != pid
    assert_nothing_left_reserved(baseline)


@pytest.mark.parametrize("how", DEATHS)
def test_an_actor_with_one_restart_comes_back_once(cluster, how):
    baseline = used_bytes()
    ledger = Ledger.options(max_restarts=1).remote()
    first_pid = dk.get(ledger.pid.remote(), timeout=30)
    dk.get(ledger.add.remote("before"), timeout=30)
    crashing = ledger.crash_midway.remote(how)
    pending = [ledger.add.remote(i) for i in range(3)]
    assert words_for(how) in actor_died(crashing)
    outcomes = [ran_or_died(call) for call in pending]  # died with it, or ran on the new one
    ran = [n for n in outcomes if n is not None]
    assert ran == list(range(1, len(ran) + 1))  # fresh state from the constructor, in order
    assert dk.get(ledger.add.remote("after"), timeout=30) == len(ran) + 1
    second_pid = dk.get(ledger.pid.remote(), timeout=30)
    assert second_pid != first_pid and not process_alive(first_pid)
    assert words_for(how) in actor_died(ledger.crash_midway.remote(how))
    assert words_for(how) in actor_died(ledger.add.remote("restarts used up"))
    del crashing, pending, ledger
    assert wait_until(lambda: not process_alive(second_pid), timeout=5)
    assert_nothing_left_reserved(baseline)


def test_a_process_reaped_while_its_state_is_read_counts_as_gone():
    """The tests above watch pids that another process reaps: the reap can land between
    opening ``/proc/<pid>/stat`` and reading it, which must read as gone, not raise."""
    for _ in range(300):
        child = subprocess.Popen(["sleep", "0.001"])
        reaper_thread = threading.Thread(target=child.wait)
        reaper_thread.start()
        while process_alive(child.pid):
            pass
        reaper_thread.join()
