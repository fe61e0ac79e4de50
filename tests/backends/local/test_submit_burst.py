"""Submissions in a burst (``LocalEngine._queue``): a loop of ``f.remote(...)`` queues plain
tasks without the engine's lock, and whoever next holds it registers them.

Each test makes a burst as a notebook loop would, then checks that nothing about the
tasks differs from tasks registered one by one: they run without a ``get`` (the I/O
thread registers what the burst's end left queued), refs dropped at once free their
results, a cancel or an interrupt finds them, their records carry the cell and the time
of the call, and a shutdown right after leaves nothing behind. ``caller_never_flushes``
makes the caller queue every task of the burst but its first, so that only the path
under test can register them.
"""

from __future__ import annotations

import time

import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.backends.base import print_output
from distkernel.backends.local import engine as local_engine
from distkernel.backends.local.reader import PUMP_EVERY
from distkernel.core import config
from distkernel.core.exceptions import ObjectLostError, TaskCancelledError
from tests.conftest import wait_until

#: Fewer than PUMP_EVERY beyond a multiple of it: the burst's last ones stay queued.
BURST = 5 * PUMP_EVERY + 7


@dk.remote
def echo(x: int) -> int:
    return x


def _engine():
    engine = runtime.current_engine()
    assert engine is not None
    return engine


def _finished() -> int:
    return sum(1 for record in _engine().timeline() if record.status == "finished")


@pytest.fixture
def caller_never_flushes(monkeypatch):
    monkeypatch.setattr(local_engine, "PUMP_EVERY", 10**9)


@pytest.fixture
def io_thread_holds_off(monkeypatch, cluster, caller_never_flushes):
    """Nobody reads the sockets for seconds: a get has just read its result itself, and
    the I/O thread waits that long before it reads again. A call that finds tasks queued
    meanwhile must register them itself."""
    monkeypatch.setattr(config, "READER_GRACE", 5.0)
    # The caller reads its result, then gives way. On a busy machine the result may come
    # after its spin, and the I/O thread read it: a get after that one's round reads itself.
    assert wait_until(lambda: dk.get(echo.remote(0), timeout=30) == 0 and
                      not _engine().io.reading_now(), timeout=20)


def test_a_burst_runs_to_the_end_without_a_get(cluster, caller_never_flushes):
    refs = [echo.remote(i) for i in range(BURST)]
    assert wait_until(lambda: _finished() >= BURST, timeout=30), \
        f"only {_finished()} of {BURST} tasks ran: the burst's tail was never registered"
    assert not _engine().queued
    assert dk.get(refs, timeout=30) == list(range(BURST))


def test_refs_dropped_during_a_burst_free_their_results(cluster, caller_never_flushes):
    for i in range(BURST):
        echo.remote(i)  # the ref dies at once, maybe before the task is registered
    assert wait_until(lambda: _finished() >= BURST, timeout=30)
    assert wait_until(lambda: dk.status()["object_store"]["num_objects"] == 0, timeout=10), \
        f"results left in the store: {dk.status()['object_store']}"


def test_the_last_task_of_a_burst_can_be_cancelled_at_once(cluster, io_thread_holds_off):
    @dk.remote
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    refs = [nap.remote(0.0) for _ in range(2 * PUMP_EVERY)] + [nap.remote(30.0)]
    dk.cancel(refs[-1])
    with pytest.raises(TaskCancelledError):
        dk.get(refs[-1], timeout=20)
    assert dk.get(refs[:-1], timeout=30) == [0.0] * (2 * PUMP_EVERY)


def test_tasks_of_a_burst_are_recorded_under_their_cell_with_their_call_time(
        cluster, io_thread_holds_off):
    engine = _engine()
    engine.route_output(lambda: "cell-7", print_output)
    before = time.time()
    refs = [echo.remote(i) for i in range(BURST)]
    after = time.time()
    engine.route_output(lambda: "cell-8", print_output)  # the next cell, at once
    assert dk.get(refs, timeout=30) == list(range(BURST))
    records = engine.timeline(cell="cell-7")
    assert len(records) == BURST
    assert all(before <= r.submitted <= after for r in records), \
        "a queued task's record must carry the time of its call, not of its registration"
    assert engine.timeline(cell="cell-8") == []
    assert set(engine.cancel_cell("cell-7")) == set()


def test_interrupting_a_cell_cancels_the_queued_tail_of_its_burst(cluster, io_thread_holds_off):
    engine = _engine()
    engine.route_output(lambda: "cell-9", print_output)

    @dk.remote
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    refs = [nap.remote(5.0) for _ in range(PUMP_EVERY + 3)]
    cancelled = engine.cancel_cell("cell-9")
    assert len(cancelled) == len(refs), "the tasks still queued must be cancelled too"
    for ref in refs:
        with pytest.raises(TaskCancelledError):
            dk.get(ref, timeout=20)


def test_shutdown_right_after_a_burst_leaves_nothing_and_says_why(cluster,
                                                                 io_thread_holds_off):
    refs = [echo.remote(i) for i in range(BURST)]
    dk.shutdown()
    with pytest.raises(ObjectLostError, match="shut down"):
        dk.get(refs[-1], timeout=5)
