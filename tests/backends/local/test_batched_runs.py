"""Short tasks submitted in a loop run in batches (``backends.local.batches``): one
scheduler entry and one message each way for many tasks.

Each test makes a loop of calls of a function the engine has seen run short, checks that
batches were formed, then checks that every task of a batch still behaves as a task of
its own: its result, its record and cell, ``cancel`` of one member (queued, running,
forced), a result not held back by a long member behind it, a crash that fails only the
member that crashed, and an interrupted cell.
"""

from __future__ import annotations

import os
import time

import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.backends.base import print_output
from distkernel.core.exceptions import TaskCancelledError, WorkerCrashedError
from tests.conftest import wait_until


@dk.remote
def echo(x):
    return x


@dk.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@dk.remote(max_retries=0)
def crash_on(x):
    if x < 0:
        os._exit(3)
    return x


def _engine():
    engine = runtime.current_engine()
    assert engine is not None
    return engine


def _known_short(function, argument) -> None:
    """Run ``function`` until the engine knows it is short enough to batch."""
    engine = _engine()
    function_hash = function._get_payload().function_hash
    assert wait_until(lambda: dk.get([function.remote(argument) for _ in range(20)]) and
                      engine.scheduler.depth_of(function_hash) >= 4, timeout=30), \
        f"{function} never counted as short: depth {engine.scheduler.depth_of(function_hash)}"


def _task_id(ref) -> str:
    engine = _engine()
    assert wait_until(lambda: engine.timeline(1) is not None and ref.hex() in engine.producers,
                      timeout=10)
    return engine.producers[ref.hex()]


def _in_batch(ref) -> bool:
    return _engine().batches.of(_task_id(ref)) is not None


def _burst_with(function, plain, special, position: int, tries: int = 5,
                counts_before: dict | None = None):
    """A loop of calls with one ``special`` argument at ``position``; repeated until that
    call landed in a batch (a busy machine can break a loop into single submissions).
    ``counts_before`` is filled with the engine's counts as they were before that loop
    (a special call that ran alone in an earlier one may have counted already)."""
    for _ in range(tries):
        if counts_before is not None:
            counts_before.update(_engine().counts)
        args = [plain] * position + [special] + [plain] * 20
        refs = [function.remote(a) for a in args]
        if _in_batch(refs[position]):
            return refs
        for ref in refs:  # the special call may run long
            dk.cancel(ref)
        wait_until(lambda: dk.status()["queued_tasks"] + dk.status()["running_tasks"] == 0)
    pytest.fail(f"no call of {function} went into a batch in {tries} loops")


def test_a_loop_of_short_tasks_runs_in_batches_each_with_its_own_result_and_record(cluster):
    engine = _engine()
    _known_short(echo, 0)
    engine.route_output(lambda: "cell-1", print_output)
    before = engine.counts["batched"]
    refs = [echo.remote(i) for i in range(3000)]
    assert dk.get(refs, timeout=60) == list(range(3000))
    assert engine.counts["batched"] - before > 1500, "the loop was not sent in batches"
    records = engine.timeline(cell="cell-1")
    assert len(records) == 3000
    assert {r.status for r in records} == {"finished"}
    assert all(r.worker_id is not None and r.submitted <= r.started <= r.finished
               for r in records)
    assert not engine.batches, "a batch that ended is still tracked"
    status = dk.status()
    assert status["queued_tasks"] == status["running_tasks"] == 0


def test_a_member_of_a_queued_batch_is_cancelled_alone(cluster):
    _known_short(echo, 0)
    blockers = [nap.remote(1.5) for _ in range(2)]  # both workers busy: batches queue
    assert wait_until(lambda: dk.status()["running_tasks"] == 2, timeout=10)
    refs = _burst_with(echo, 1, 2, position=5)
    assert _engine().scheduler.run_of(_engine().batches.of(_task_id(refs[5])).spec.task_id) \
        is None, "the batch should still be queued"
    dk.cancel(refs[5])
    with pytest.raises(TaskCancelledError):
        dk.get(refs[5], timeout=10)
    values = dk.get(refs[:5] + refs[6:], timeout=30)
    assert values == [1] * 25
    dk.get(blockers, timeout=30)


@pytest.mark.parametrize("force", [False, True])
def test_a_running_member_of_a_batch_is_cancelled_and_the_others_finish(cluster, force):
    engine = _engine()
    _known_short(nap, 0)
    refs = _burst_with(nap, 0, 60, position=3)
    task_id = _task_id(refs[3])
    assert wait_until(lambda: any(engine.running_spec(w) is not None and
                                  engine.running_spec(w).task_id == task_id
                                  for w in list(engine.workers)), timeout=20), \
        "the long member never ran"
    started = time.monotonic()
    dk.cancel(refs[3], force=force)
    with pytest.raises(TaskCancelledError):
        dk.get(refs[3], timeout=20)
    assert time.monotonic() - started < 15, "the cancel did not stop the running member"
    assert dk.get(refs[:3] + refs[4:], timeout=30) == [0] * 23
    assert engine.counts["workers_died"] == (1 if force else 0)


def test_a_long_member_does_not_hold_back_the_results_before_it(cluster):
    _known_short(nap, 0)
    refs = _burst_with(nap, 0, 60, position=4)
    assert dk.get(refs[:4], timeout=15) == [0] * 4, "results held behind a running member"
    dk.cancel(refs[4])
    assert dk.get(refs[5:], timeout=30) == [0] * 20


def test_a_crash_in_a_batch_fails_only_the_member_that_crashed(cluster):
    _known_short(crash_on, 1)
    before: dict = {}
    refs = _burst_with(crash_on, 1, -1, position=4, counts_before=before)
    with pytest.raises(WorkerCrashedError, match="crash_on"):
        dk.get(refs[4], timeout=30)
    assert dk.get(refs[:4] + refs[5:], timeout=30) == [1] * 24
    assert _engine().counts["workers_died"] == before.get("workers_died", 0) + 1


def test_interrupting_a_cell_cancels_its_batches_queued_and_running(cluster):
    engine = _engine()
    _known_short(nap, 0)
    engine.route_output(lambda: "cell-2", print_output)
    refs = _burst_with(nap, 0.5, 0.5, position=5)
    refs += [nap.remote(0.5) for _ in range(40)]
    assert wait_until(lambda: dk.status()["running_tasks"] > 0, timeout=10)
    cancelled = engine.cancel_cell("cell-2")
    assert cancelled, "nothing of the cell was found to cancel"
    outcomes = []
    for ref in refs:
        try:
            outcomes.append(dk.get(ref, timeout=30))
        except TaskCancelledError:
            outcomes.append("cancelled")
    assert outcomes.count("cancelled") >= len(refs) - 4, outcomes  # at most one per worker ran
    assert wait_until(lambda: not engine.batches and dk.status()["queued_tasks"] == 0,
                      timeout=10)
