"""Failures in each phase, and that the pool keeps working after every one of them."""

from __future__ import annotations

import gc
import os
import signal
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest

import distkernel as dk
from tests.conftest import (
    kill_driver_after_first_line,
    process_alive,
    segments_left_by,
    wait_until,
)


@dk.remote
def ok():
    return "ok"


class Unpicklable:
    def __init__(self):
        self.lock = threading.Lock()


def raise_value_error():
    raise ValueError("bad value 42")


def return_unpicklable():
    return Unpicklable()


def crash_with_exit():
    os._exit(3)


def crash_with_segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.parametrize(("phase", "body", "error", "match"), [
    ("running", raise_value_error, ValueError, "bad value 42"),
    ("running", raise_value_error, dk.TaskError, "Remote traceback"),
    ("returning", return_unpicklable, dk.SerializationError, r"lock: _thread\.lock"),
    pytest.param("crashing", crash_with_exit, dk.WorkerCrashedError, "exit code 3",
                 marks=pytest.mark.local_only("Ray's message names no exit code")),
    pytest.param("crashing", crash_with_segfault, dk.WorkerCrashedError, "SIGSEGV",
                 marks=pytest.mark.local_only("Ray's message names no signal")),
    ("crashing", crash_with_exit, dk.WorkerCrashedError, "crash|died"),
])
def test_error_in_each_phase_then_pool_still_works(cluster, phase, body, error, match):
    task = dk.remote(max_retries=0)(body)
    with pytest.raises(error, match=match):
        dk.get(task.remote(), timeout=30)
    assert dk.get([ok.remote() for _ in range(4)], timeout=30) == ["ok"] * 4


@dk.remote
def echo(value):
    return value


def test_serialization_error_at_submit_names_the_member(cluster):
    with pytest.raises(dk.SerializationError, match=r"Unpicklable\(\.\.\.\)\.lock") as info:
        echo.remote(Unpicklable())
    assert isinstance(info.value, TypeError)
    text = str(info.value)
    assert "__reduce__" in text and "register_serializer" in text and "wrapper" in text
    with pytest.raises(dk.SerializationError):
        dk.put(Unpicklable())
    assert dk.get(ok.remote()) == "ok"


def test_task_error_is_both_task_error_and_original(cluster):
    task = dk.remote(raise_value_error)
    with pytest.raises(ValueError) as info:
        dk.get(task.remote())
    error = info.value
    assert isinstance(error, dk.TaskError) and isinstance(error, ValueError)
    assert "raise_value_error" in str(error)  # the remote traceback names the function
    assert isinstance(error.cause, ValueError)
    assert "bad value 42" in str(error.__cause__)  # the remote traceback is the cause


def test_a_caught_task_error_holds_on_to_nothing(cluster):
    """A notebook that catches a task's error and moves on lets go of the failed result
    with its last ref, not at some later garbage collection: the error keeps no frame of
    ours (and through it the refs the call was given) in a cycle."""
    task = dk.remote(raise_value_error)
    ref = task.remote()
    ref_alive = weakref.ref(ref)
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            dk.get(ref)
        except dk.TaskError:
            pass
        del ref
        assert ref_alive() is None
    finally:
        if collecting:
            gc.enable()


class Thing:
    """Whether it is still alive can be asked (a weak reference to it)."""


@dk.remote
def catches_and_looks(refs):
    """Inside a task: get a failed ref, catch its error in a call holding a thing; is the
    thing alive after the call? Garbage collection is off meanwhile."""
    def holding(thing):
        try:
            dk.get(refs[0])
        except ValueError:
            pass

    gc.disable()
    try:
        thing = Thing()
        thing_alive = weakref.ref(thing)
        holding(thing)
        del thing
        return thing_alive() is not None
    finally:
        gc.enable()


def test_a_task_that_catches_an_error_holds_on_to_nothing(cluster):
    failed = dk.remote(raise_value_error).remote()
    assert dk.get(catches_and_looks.remote([failed]), timeout=60) is False


def test_custom_exception_class_from_notebook(cluster):
    class QuotaError(Exception):
        def __init__(self, user, limit):
            super().__init__(f"{user} is over {limit}")
            self.user = user

    @dk.remote
    def check():
        raise QuotaError("ann", 3)

    with pytest.raises(QuotaError, match="ann is over 3") as info:
        dk.get(check.remote())
    assert info.value.user == "ann"


def test_crash_is_retried_then_succeeds(cluster, tmp_path):
    marker = tmp_path / "crashed-once"

    @dk.remote(max_retries=2)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "second try"

    assert dk.get(flaky.remote(str(marker)), timeout=30) == "second try"


@pytest.mark.local_only("Ray's message for a crashed worker names no task, pid or retries")
def test_crash_message_names_task_pid_and_retries(cluster):
    crasher = dk.remote(max_retries=1)(crash_with_exit)
    with pytest.raises(dk.WorkerCrashedError) as info:
        dk.get(crasher.remote(), timeout=30)
    text = str(info.value)
    assert "crash_with_exit" in text and "pid" in text and "after 1 retry" in text
    status = dk.status()
    assert len([w for w in status["workers"] if w["state"] != "dead"]) == 2


def test_get_timeout_leaves_task_running(cluster):
    @dk.remote
    def slow():
        time.sleep(1.0)
        return "done"

    ref = slow.remote()
    with pytest.raises(dk.GetTimeoutError, match="keep running") as info:
        dk.get(ref, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert dk.get(ref, timeout=10) == "done"


def test_cancel_queued_task(cluster):
    @dk.remote
    def slow():
        time.sleep(1.0)

    blockers = [slow.remote() for _ in range(2)]
    queued = ok.remote()
    dk.cancel(queued)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(queued, timeout=5)
    dk.get(blockers)


def test_cancel_running_task_interrupts_it(cluster, tmp_path):
    started_file = tmp_path / "started"

    @dk.remote
    def forever(path):
        open(path, "w").close()
        while True:
            time.sleep(0.05)

    ref = forever.remote(str(started_file))
    assert wait_until(started_file.exists, timeout=30), "forever() never started"
    started = time.monotonic()
    dk.cancel(ref)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(ref, timeout=10)
    assert time.monotonic() - started < 5
    assert dk.get(ok.remote()) == "ok"


@pytest.mark.local_only("compares the local pool's worker pids")
def test_cancel_swallowing_task_with_force_kills_worker(cluster):
    @dk.remote
    def stubborn():
        while True:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: BLE001 - a task that ignores interrupts
                pass

    ref = stubborn.remote()
    assert wait_until(lambda: any(w["current_task"] for w in dk.status()["workers"])), \
        "stubborn() never showed up as a worker's current task"
    pids_before = {w["pid"] for w in dk.status()["workers"]}
    dk.cancel(ref, force=True)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(ref, timeout=10)
    assert dk.get([ok.remote() for _ in range(3)]) == ["ok"] * 3
    assert wait_until(lambda: len(dk.status()["workers"]) == 2)
    assert {w["pid"] for w in dk.status()["workers"]} != pids_before


@pytest.mark.local_only("signals the local pool's worker processes")
def test_sigint_to_workers_without_cancel_is_ignored(cluster):
    @dk.remote
    def nap():
        time.sleep(0.5)
        return "rested"

    ref = nap.remote()
    assert wait_until(lambda: any(w["current_task"] for w in dk.status()["workers"])), \
        "nap() never showed up as a worker's current task"
    for worker in dk.status()["workers"]:
        os.kill(worker["pid"], signal.SIGINT)  # as Jupyter's interrupt of the process group
    assert dk.get(ref) == "rested"


DRIVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import distkernel as dk
    dk.init(2)
    refs = [dk.put(np.ones(1_000_000)) for _ in range(3)]
    @dk.remote
    def stay():
        time.sleep(60)
    pending = [stay.remote() for _ in range(2)]
    print(" ".join(str(w["pid"]) for w in dk.status()["workers"]), flush=True)
    time.sleep(60)
""")


def test_sigkilled_driver_leaves_no_workers_or_segments(tmp_path):
    driver_pid, line = kill_driver_after_first_line(tmp_path, DRIVER)
    worker_pids = [int(p) for p in line.split()]
    assert len(worker_pids) == 2

    def all_gone():
        alive = [p for p in worker_pids if process_alive(p)]
        return not alive and not segments_left_by(driver_pid)

    assert wait_until(all_gone, timeout=10)



def test_error_result_from_argument_propagates(cluster):
    failing = dk.remote(max_retries=0)(raise_value_error)

    @dk.remote
    def consume(x):
        return x

    with pytest.raises(ValueError, match="bad value 42"):
        dk.get(consume.remote(failing.remote()))


def test_unpicklable_large_values_fail_fast(cluster):
    holder = {"arr": np.ones(1_000_000), "lock": threading.Lock()}
    with pytest.raises(dk.SerializationError, match=r"\['lock'\]"):
        dk.put(holder)
    assert dk.status()["object_store"]["used_bytes"] == 0
