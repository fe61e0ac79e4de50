"""The scheduler as a pure state machine: events in, instructions out, no processes.

Modelled on dask/distributed's ``test_worker_state_machine.py`` (STYLE habit 3): each test
builds a ``Scheduler``, feeds it the events the engine would (``local_core`` and
``local_requests``), and asserts on the exact instructions it returns. Worker ids count from 1
in ``add_worker`` order; run seqs count from 1 in dispatch order.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import pytest

from distkernel.core.protocol import InlineValue, TaskKind, TaskSpec
from distkernel.engine.scheduler import (
    ACTOR_IN_FLIGHT,
    PREFETCH_BELOW,
    PREFETCH_DEPTH,
    PREFETCH_WORK,
    Dispatch,
    FailTask,
    Instruction,
    InterruptWorker,
    KillWorker,
    Revoke,
    Scheduler,
    StartWorker,
    StopWorker,
)

CRASH = "worker 1 (pid 101) died with SIGKILL while running f"
#: Seconds: a run this long makes its function "short", and so short that a worker holds the most.
SHORT = PREFETCH_WORK / PREFETCH_DEPTH / 2
LONG = 0.5

_ids = itertools.count(1)


# --- helpers --------------------------------------------------------------------------------------

def task(name: str = "f", *, fn: str | None = None, refs: tuple[str, ...] = (),
         kind: TaskKind = "task", actor_id: str = "", pin: int = 0,
         retries: int = 0) -> TaskSpec:
    """A TaskSpec with a unique id; its function hash is ``fn`` (default: ``name``)."""
    task_id = f"{name}-{next(_ids)}"
    return TaskSpec(task_id=task_id, name=name, kind=kind,
                    function_hash=name if fn is None else fn, args=InlineValue(b""),
                    top_level_refs=refs, return_ids=(f"{task_id}.out",), max_retries=retries,
                    actor_id=actor_id, pin_worker=pin)


def actor_create(actor_id: str = "A", *, refs: tuple[str, ...] = ()) -> TaskSpec:
    return task("Counter", kind="actor_create", actor_id=actor_id, refs=refs)


def actor_call(actor_id: str = "A", *, refs: tuple[str, ...] = (), retries: int = 0) -> TaskSpec:
    """A method call as actors.py builds it: no function hash, ``max_retries=0`` by default."""
    return task("Counter.add", fn="", kind="actor_method", actor_id=actor_id, refs=refs,
                retries=retries)


_EVENTS = ("start", "worker_ready", "worker_died", "worker_stopped", "worker_blocked",
           "worker_unblocked", "submit", "object_ready", "task_done", "cancel", "resize",
           "create_actor", "actor_creation_failed", "kill_actor", "release_actor")


class CheckedScheduler(Scheduler):
    """The scheduler, its invariants checked (``validate_state``) after every event."""


def _checked(name: str):
    def event(self, *args, **kwargs):
        out = getattr(Scheduler, name)(self, *args, **kwargs)
        self.validate_state()
        return out

    return event


for _name in _EVENTS:
    setattr(CheckedScheduler, _name, _checked(_name))


def new_scheduler(num_workers: int = 1, *, max_extra_workers: int = 2,
                  ready: set[str] | None = None,
                  resources: dict[str, float] | None = None) -> Scheduler:
    """A scheduler whose stored objects are the ids in ``ready`` (add to it, then object_ready)."""
    stored = set() if ready is None else ready
    return CheckedScheduler(num_workers, is_ready=lambda oid: oid in stored,
                            max_extra_workers=max_extra_workers, resources=resources)


def add_started(sched: Scheduler, instructions: Iterable[Instruction]) -> list[int]:
    """What the engine does for each StartWorker: record the worker; returns the new ids."""
    return [sched.add_worker(extra=i.extra, actor_id=i.actor_id)
            for i in instructions if isinstance(i, StartWorker)]


def ready_worker(sched: Scheduler, worker_id: int) -> list[Instruction]:
    return sched.worker_ready(worker_id)


def booted(num_workers: int = 1, *, max_extra_workers: int = 2,
           ready: set[str] | None = None,
           resources: dict[str, float] | None = None) -> Scheduler:
    """A scheduler whose ``num_workers`` regular workers (ids 1..n) are started and idle."""
    sched = new_scheduler(num_workers, max_extra_workers=max_extra_workers, ready=ready,
                          resources=resources)
    for worker_id in add_started(sched, sched.start()):
        assert ready_worker(sched, worker_id) == []
    return sched


def learn(sched: Scheduler, fn: str, seconds: float) -> None:
    """Run one task of ``fn`` on an idle worker so the scheduler learns how long it takes."""
    (dispatch,) = sched.submit(task(fn))
    assert isinstance(dispatch, Dispatch)
    assert sched.task_done(dispatch.worker_id, dispatch.seq, seconds) == []


def seq_of(sched: Scheduler, spec: TaskSpec) -> int | None:
    return sched.tasks[spec.task_id].seq


def rerun(create: TaskSpec) -> TaskSpec:
    """A restart runs the constructor again but makes no result: the actor's id has its value."""
    return dataclasses.replace(create, return_ids=())


def dispatched(instructions: Iterable[Instruction]) -> list[tuple[int, TaskSpec]]:
    """(worker id, spec) of each Dispatch, in order."""
    return [(i.worker_id, i.spec) for i in instructions if isinstance(i, Dispatch)]


def failed(instructions: Iterable[Instruction]) -> list[tuple[TaskSpec, str]]:
    """(spec, reason) of each FailTask, in order."""
    return [(i.spec, i.reason) for i in instructions if isinstance(i, FailTask)]


def queued(sched: Scheduler) -> list[str]:
    return list(sched.queue)


def live_actor(sched: Scheduler, create: TaskSpec, *, max_restarts: int = 0,
               max_task_retries: int = 0) -> int:
    """Create an actor, bring its worker up and finish its constructor; returns the worker id."""
    started = sched.create_actor(create, "Counter", max_restarts, max_task_retries)
    assert started == [StartWorker(actor_id=create.actor_id)]
    (worker_id,) = add_started(sched, started)
    (dispatch,) = ready_worker(sched, worker_id)
    assert dispatch == Dispatch(worker_id, dispatch.seq, create)
    assert sched.task_done(worker_id, dispatch.seq, 0.01) == []
    return worker_id


# --- 1. start, add_worker, worker_ready -----------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_start_asks_for_one_worker_per_slot(num_workers):
    assert new_scheduler(num_workers).start() == [StartWorker()] * num_workers


def test_start_after_the_workers_were_added_asks_for_nothing_more():
    sched = new_scheduler(2)
    add_started(sched, sched.start())
    assert sched.start() == []


def test_add_worker_numbers_workers_from_one_and_records_their_kind():
    sched = new_scheduler(2)
    assert sched.add_worker() == 1
    assert sched.add_worker(extra=True) == 2
    assert sched.add_worker(actor_id="A") == 3
    assert [(w.state, w.extra, w.actor_id) for w in sched.workers.values()] == [
        ("starting", False, ""), ("starting", True, ""), ("starting", False, "A")]


def test_tasks_submitted_before_any_worker_is_ready_wait_in_the_queue():
    sched = new_scheduler(2)
    add_started(sched, sched.start())
    a, b, c = task("a"), task("b"), task("c")
    assert [sched.submit(t) for t in (a, b, c)] == [[], [], []]
    assert queued(sched) == [a.task_id, b.task_id, c.task_id]


def test_worker_ready_dispatches_queued_tasks_fifo_one_per_idle_worker():
    sched = new_scheduler(2)
    add_started(sched, sched.start())
    a, b, c = task("a"), task("b"), task("c")
    for t in (a, b, c):
        sched.submit(t)
    assert ready_worker(sched, 1) == [Dispatch(1, 1, a)]
    assert ready_worker(sched, 2) == [Dispatch(2, 2, b)]
    assert queued(sched) == [c.task_id]
    assert sched.workers[1].state == sched.workers[2].state == "busy"


def test_submit_goes_to_the_first_idle_worker():
    sched = booted(2)
    a, b, c = task("a"), task("b"), task("c")
    assert sched.submit(a) == [Dispatch(1, 1, a)]
    assert sched.submit(b) == [Dispatch(2, 2, b)]
    assert sched.submit(c) == []  # an unknown function is never pipelined


# --- 2. dependencies ------------------------------------------------------------------------------

def test_task_waiting_on_a_dependency_holds_no_worker():
    sched = booted(1)
    waiting, free = task("waiting", refs=("x",)), task("free")
    assert sched.submit(waiting) == []
    assert queued(sched) == []
    assert sched.submit(free) == [Dispatch(1, 1, free)]


def test_task_whose_dependency_is_stored_already_runs_at_once():
    sched = booted(1, ready={"x"})
    t = task(refs=("x",))
    assert sched.submit(t) == [Dispatch(1, 1, t)]


def test_object_ready_dispatches_the_task_waiting_on_it():
    ready: set[str] = set()
    sched = booted(1, ready=ready)
    t = task(refs=("x",))
    sched.submit(t)
    ready.add("x")
    assert sched.object_ready("x") == [Dispatch(1, 1, t)]


@pytest.mark.parametrize(("stored", "arrive"), [
    ((), ("x", "y", "z")),
    ((), ("z", "y", "x")),
    (("y",), ("z", "x")),
], ids=["in order", "reverse order", "one stored at submit"])
def test_task_waits_for_every_dependency(stored, arrive):
    ready = set(stored)
    sched = booted(1, ready=ready)
    t = task(refs=("x", "y", "z"))
    assert sched.submit(t) == []
    *first, last = arrive
    for object_id in first:
        ready.add(object_id)
        assert sched.object_ready(object_id) == []
    ready.add(last)
    assert sched.object_ready(last) == [Dispatch(1, 1, t)]


def test_tasks_waiting_on_the_same_object_dispatch_in_submission_order():
    ready: set[str] = set()
    sched = booted(2, ready=ready)
    a, b = task("a", refs=("x",)), task("b", refs=("x",))
    sched.submit(a)
    sched.submit(b)
    ready.add("x")
    assert sched.object_ready("x") == [Dispatch(1, 1, a), Dispatch(2, 2, b)]


def test_object_ready_that_nobody_waits_for_does_nothing():
    sched = booted(1)
    assert sched.object_ready("nobody-waits") == []


# --- 3. task_done, durations and pipelining -------------------------------------------------------

def test_task_done_frees_the_worker_for_the_next_queued_task():
    sched = booted(1)
    a, b = task("a"), task("b")
    sched.submit(a)
    sched.submit(b)
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 2, b)]
    assert sched.task_done(1, 2, 0.1) == []
    assert sched.workers[1].state == "idle"
    assert sched.tasks == {}


def test_short_function_is_pipelined_up_to_prefetch_depth():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    quick = [task("q", fn="quick") for _ in range(PREFETCH_DEPTH + 2)]
    sent, held = quick[:PREFETCH_DEPTH], quick[PREFETCH_DEPTH:]
    assert [sched.submit(t) for t in sent] == [[Dispatch(1, seq, t)]
                                               for seq, t in enumerate(sent, start=2)]
    assert [sched.submit(t) for t in held] == [[], []]
    assert len(sched.workers[1].assigned) == PREFETCH_DEPTH
    assert queued(sched) == [t.task_id for t in held]


@pytest.mark.parametrize("typical, held", [
    (PREFETCH_BELOW * 0.9, 2),                 # under PREFETCH_WORK in two runs: two, not one
    (PREFETCH_WORK / 10, 10),                  # about PREFETCH_WORK of work ahead
    (PREFETCH_BELOW * 1.1, 1),                 # not short: nothing is sent ahead
])
def test_a_worker_is_sent_about_prefetch_work_of_short_runs(typical: float, held: int):
    sched = booted(1)
    learn(sched, "f", typical)
    for t in [task("f", fn="f") for _ in range(PREFETCH_DEPTH)]:
        sched.submit(t)
    assert len(sched.workers[1].assigned) == held
    assert len(queued(sched)) == PREFETCH_DEPTH - held


def test_pipelining_refills_a_worker_as_its_runs_finish():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    quick = [task("q", fn="quick") for _ in range(PREFETCH_DEPTH + 1)]
    for t in quick:
        sched.submit(t)
    last = quick[-1]
    assert sched.task_done(1, 2, SHORT) == [Dispatch(1, 2 + PREFETCH_DEPTH, last)]
    assert sched.workers[1].state == "busy"


def test_pipelining_is_round_robin_one_more_run_per_worker_each_pass():
    ready: set[str] = set()
    sched = booted(2, ready=ready)
    learn(sched, "quick", SHORT)
    sched.submit(task("q", fn="quick"))  # worker 1 runs a short task
    sched.submit(task("q", fn="quick"))  # and so does worker 2
    waiting = [task("w", fn="quick", refs=("x",)) for _ in range(2 * PREFETCH_DEPTH)]
    for t in waiting:
        sched.submit(t)
    ready.add("x")
    out = sched.object_ready("x")
    per_worker = PREFETCH_DEPTH - 1
    assert dispatched(out) == [(worker, t) for worker, t
                               in zip([1, 2] * per_worker, waiting)]
    assert queued(sched) == [t.task_id for t in waiting[2 * per_worker:]]


NOT_PIPELINED = [
    # (running function, its kind, next function, its kind)
    ("quick", "task", "slow", "task"),
    ("slow", "task", "quick", "task"),
    ("quick", "task", "never-seen", "task"),
    ("never-seen", "task", "quick", "task"),
    ("quick", "cell", "quick", "task"),
    ("quick", "task", "quick", "cell"),
]


@pytest.mark.parametrize(("running_fn", "running_kind", "next_fn", "next_kind"), NOT_PIPELINED)
def test_no_pipelining_unless_both_tasks_are_known_short(running_fn, running_kind, next_fn,
                                                         next_kind):
    sched = booted(1)
    learn(sched, "quick", SHORT)
    learn(sched, "slow", LONG)
    running = task("running", fn=running_fn, kind=running_kind)
    following = task("next", fn=next_fn, kind=next_kind)
    assert sched.submit(running) == [Dispatch(1, 3, running)]
    assert sched.submit(following) == []


def test_one_slow_run_makes_a_short_function_long_again():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    learn(sched, "quick", 1.0)  # a moving average: 0.7 * short + 0.3 * 1s
    sched.submit(task("q", fn="quick"))
    assert sched.submit(task("q", fn="quick")) == []


def test_failed_or_cancelled_runs_teach_no_duration():
    sched = booted(1)
    t = task("t", fn="quick")
    sched.submit(t)
    sched.task_done(1, 1, None)  # the engine passes None when the run failed or was cancelled
    sched.submit(task("q", fn="quick"))
    assert sched.submit(task("q", fn="quick")) == []


# --- 4. worker_died -------------------------------------------------------------------------------

@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_crashing_task_is_retried_max_retries_times_then_fails(max_retries):
    sched = booted(1)
    t = task(retries=max_retries)
    assert sched.submit(t) == [Dispatch(1, 1, t)]
    worker = 1
    for attempt in range(max_retries):
        assert sched.worker_died(worker, CRASH) == [StartWorker()]
        (worker,) = add_started(sched, [StartWorker()])
        assert ready_worker(sched, worker) == [Dispatch(worker, attempt + 2, t)]
    assert sched.worker_died(worker, CRASH) == [FailTask(t, "crashed", CRASH), StartWorker()]
    assert t.task_id not in sched.tasks


def test_retried_task_goes_to_the_front_of_the_queue():
    sched = booted(1)
    a, b = task("a", retries=1), task("b")
    sched.submit(a)
    sched.submit(b)
    assert sched.worker_died(1, CRASH) == [StartWorker()]
    assert queued(sched) == [a.task_id, b.task_id]
    assert sched.tasks[a.task_id].retries_left == 0


def test_retried_task_is_dispatched_at_once_to_an_idle_worker():
    sched = booted(2)
    t = task(retries=1)
    sched.submit(t)
    assert sched.worker_died(1, CRASH) == [StartWorker(), Dispatch(2, 2, t)]


def test_idle_worker_that_dies_is_replaced():
    sched = booted(2)
    assert sched.worker_died(2, "worker 2 died with SIGKILL while idle") == [StartWorker()]
    assert sched.worker_died(2, "again") == []  # unknown now: nothing to do


def test_pipelined_runs_that_never_started_are_requeued_without_using_a_retry():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    running = task("running", fn="quick")
    later = [task("later", fn="quick", retries=1) for _ in range(2)]
    for t in (running, *later):
        sched.submit(t)
    assert sched.worker_died(1, CRASH) == [FailTask(running, "crashed", CRASH), StartWorker()]
    assert sorted(queued(sched)) == sorted(t.task_id for t in later)
    assert [sched.tasks[t.task_id].retries_left for t in later] == [1, 1]


def test_runs_of_a_dead_worker_are_requeued_in_submission_order():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    runs = [task("run", fn="quick", retries=1) for _ in range(3)]
    for t in runs:
        sched.submit(t)
    sched.worker_died(1, CRASH)
    assert queued(sched) == [t.task_id for t in runs]


@pytest.mark.parametrize("position", ["running", "pipelined"])
def test_runs_of_a_dead_worker_that_were_cancelled_fail_as_cancelled(position):
    sched = booted(1)
    learn(sched, "quick", SHORT)
    running, pipelined = task("a", fn="quick", retries=2), task("b", fn="quick", retries=2)
    sched.submit(running)
    sched.submit(pipelined)
    cancelled = running if position == "running" else pipelined
    sched.cancel(cancelled.task_id, force=False)
    out = sched.worker_died(1, CRASH)
    assert FailTask(cancelled, "cancelled", "the task was cancelled") in out
    assert cancelled.task_id not in sched.tasks
    assert cancelled.task_id not in sched.queue


def test_dead_extra_worker_is_replaced_while_the_parent_still_waits():
    sched = booted(1)
    sched.submit(task("parent"))
    child = task("child", retries=1)
    sched.submit(child)
    (extra,) = add_started(sched, sched.worker_blocked(1))
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, child)]
    assert sched.worker_died(extra, CRASH) == [StartWorker(extra=True)]
    assert queued(sched) == [child.task_id]


# --- 5. cancel ------------------------------------------------------------------------------------

def test_cancel_queued_task_fails_it_and_takes_it_off_the_queue():
    sched = booted(1)
    sched.submit(task("running"))
    queued_task = task("queued")
    sched.submit(queued_task)
    assert sched.cancel(queued_task.task_id, force=False) == [
        FailTask(queued_task, "cancelled", "the task was cancelled before it ran")]
    assert queued(sched) == []
    assert queued_task.task_id not in sched.tasks


@pytest.mark.parametrize("force", [False, True])
def test_cancel_task_waiting_on_a_dependency_fails_it_and_stops_the_wait(force):
    ready: set[str] = set()
    sched = booted(1, ready=ready)
    t = task(refs=("x",))
    sched.submit(t)
    assert sched.cancel(t.task_id, force=force) == [
        FailTask(t, "cancelled", "the task was cancelled before it ran")]
    ready.add("x")
    assert sched.object_ready("x") == []
    assert sched.tasks == {}


def test_cancel_running_task_interrupts_its_worker():
    sched = booted(1)
    t = task()
    sched.submit(t)
    assert sched.cancel(t.task_id, force=False) == [InterruptWorker(1, 1)]
    assert sched.tasks[t.task_id].cancel_requested


def test_force_cancel_running_task_kills_its_worker():
    sched = booted(1)
    t = task()
    sched.submit(t)
    assert sched.cancel(t.task_id, force=True) == [KillWorker(1)]


@pytest.mark.parametrize("force", [False, True])
def test_cancel_pipelined_run_interrupts_it_and_the_worker_decides(force):
    sched = booted(1)
    learn(sched, "quick", SHORT)
    running, pipelined = task("a", fn="quick"), task("b", fn="quick")
    sched.submit(running)
    sched.submit(pipelined)
    assert sched.cancel(pipelined.task_id, force=force) == [InterruptWorker(1, 3)]


def test_cancel_unknown_or_finished_task_does_nothing():
    sched = booted(1)
    t = task()
    sched.submit(t)
    sched.task_done(1, 1, 0.1)
    assert sched.cancel(t.task_id, force=True) == []
    assert sched.cancel("never-submitted", force=False) == []


def test_cancel_queued_pinned_task_takes_it_off_its_worker_queue():
    sched = booted(1)
    sched.submit(task("running"))
    pinned = task("pinned", pin=1)
    sched.submit(pinned)
    assert failed(sched.cancel(pinned.task_id, force=False)) == [(pinned, "cancelled")]
    assert sched.task_done(1, 1, 0.1) == []


# --- 6. worker_blocked ----------------------------------------------------------------------------

def test_blocked_worker_with_queued_work_and_no_idle_worker_starts_an_extra_one():
    sched = booted(1)
    parent, child = task("parent"), task("child")
    sched.submit(parent)
    sched.submit(child)
    assert sched.worker_blocked(1) == [StartWorker(extra=True)]
    (extra,) = add_started(sched, [StartWorker(extra=True)])
    assert sched.workers[extra].extra
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, child)]


def test_blocked_worker_with_nothing_queued_starts_nothing():
    sched = booted(1)
    sched.submit(task("parent"))
    assert sched.worker_blocked(1) == []
    assert sched.workers[1].state == "blocked"


def test_only_a_busy_worker_can_block():
    sched = booted(1)
    assert sched.worker_blocked(1) == []  # idle
    sched.submit(task("parent"))
    sched.submit(task("child"))
    assert sched.worker_blocked(1) == [StartWorker(extra=True)]
    assert sched.worker_blocked(1) == []  # blocked already
    assert sched.worker_blocked(99) == []  # unknown


def test_blocked_worker_gives_back_its_pipelined_runs_in_order():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    running, second, third = (task(n, fn="quick") for n in ("running", "second", "third"))
    for t in (running, second, third):
        sched.submit(t)
    other = task("other")
    sched.submit(other)
    assert sched.worker_blocked(1) == [Revoke(1, (3, 4)), StartWorker(extra=True)]
    assert queued(sched) == [second.task_id, third.task_id, other.task_id]
    assert list(sched.workers[1].assigned) == [2]
    assert sched.task_of_run(3) is None


def test_runs_taken_back_from_a_blocked_worker_go_to_an_idle_one():
    sched = booted(2)
    learn(sched, "quick", SHORT)
    running, second, third = (task(n, fn="quick") for n in ("running", "second", "third"))
    long_task = task("long")
    assert sched.submit(running) == [Dispatch(1, 2, running)]
    assert sched.submit(long_task) == [Dispatch(2, 3, long_task)]
    assert sched.submit(second) == [Dispatch(1, 4, second)]
    assert sched.submit(third) == [Dispatch(1, 5, third)]
    assert sched.task_done(2, 3, LONG) == []  # worker 2 idle now
    assert sched.worker_blocked(1) == [
        Revoke(1, (4, 5)), Dispatch(2, 6, second), Dispatch(2, 7, third)]


def test_extra_worker_stops_once_idle_and_the_pool_is_back_above_size():
    sched = booted(1)
    parent, child = task("parent"), task("child")
    sched.submit(parent)
    sched.submit(child)
    (extra,) = add_started(sched, sched.worker_blocked(1))
    ready_worker(sched, extra)
    assert sched.worker_unblocked(1) == []
    assert sched.workers[1].state == "busy"
    assert sched.task_done(extra, 2, 0.1) == [StopWorker(extra)]
    assert sched.workers[extra].state == "stopping"
    sched.worker_stopped(extra)
    assert extra not in sched.workers


def test_extra_worker_keeps_taking_queued_work_while_the_pool_is_blocked():
    sched = booted(1)
    parent, first, second = task("parent"), task("first"), task("second")
    for t in (parent, first, second):
        sched.submit(t)
    (extra,) = add_started(sched, sched.worker_blocked(1))
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, first)]
    assert sched.task_done(extra, 2, 0.1) == [Dispatch(extra, 3, second)]


def test_no_extra_worker_when_max_extra_workers_is_zero():
    sched = booted(1, max_extra_workers=0)
    sched.submit(task("parent"))
    sched.submit(task("child"))
    assert sched.worker_blocked(1) == []


@pytest.mark.parametrize(("max_extra_workers", "second_block"), [
    (1, []),
    (2, [StartWorker(extra=True)]),
])
def test_extra_workers_are_capped_at_max_extra_workers(max_extra_workers, second_block):
    sched = booted(1, max_extra_workers=max_extra_workers)
    parent, child, grandchild = task("parent"), task("child"), task("grandchild")
    for t in (parent, child, grandchild):
        sched.submit(t)
    (extra,) = add_started(sched, sched.worker_blocked(1))
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, child)]
    assert sched.worker_blocked(extra) == second_block  # the child waits too


def test_blocked_actor_worker_keeps_its_calls():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    calls = [actor_call(), actor_call()]
    for call in calls:
        sched.submit(call)
    assert sched.worker_blocked(worker) == []
    assert list(sched.workers[worker].assigned) == [2, 3]


def test_idle_actor_worker_does_not_stop_an_extra_worker_from_starting():
    sched = booted(1)
    live_actor(sched, actor_create())
    parent, child = task("parent"), task("child")
    assert sched.submit(parent) == [Dispatch(1, 2, parent)]
    assert sched.submit(child) == []
    assert sched.worker_blocked(1) == [StartWorker(extra=True)]


def test_task_queued_after_the_extra_worker_finished_still_gets_a_worker():
    ready: set[str] = set()
    sched = booted(1, ready=ready)
    parent, first = task("parent"), task("first")
    second = task("second", refs=first.return_ids)  # parent: get(second.remote(first.remote()))
    for t in (parent, first, second):
        sched.submit(t)
    (extra,) = add_started(sched, sched.worker_blocked(1))
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, first)]
    out = sched.task_done(extra, 2, 0.1)  # the engine: task_done, then complete -> object_ready
    ready.add(first.return_ids[0])
    out += sched.object_ready(first.return_ids[0])
    assert (second in [spec for _, spec in dispatched(out)]) or StartWorker(extra=True) in out


def test_cancelled_pipelined_run_taken_back_from_a_blocked_worker_fails_as_cancelled():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    running, pipelined = task("a", fn="quick"), task("b", fn="quick")
    sched.submit(running)
    sched.submit(pipelined)
    assert sched.cancel(pipelined.task_id, force=False) == [InterruptWorker(1, 3)]
    out = sched.worker_blocked(1)
    assert failed(out) == [(pipelined, "cancelled")]
    assert pipelined.task_id not in sched.queue


# --- 7. pinned tasks ------------------------------------------------------------------------------

def test_pinned_task_waits_for_its_worker_even_if_another_is_idle():
    sched = booted(2)
    busy = task("busy")
    sched.submit(busy)
    pinned = task("pinned", pin=1)
    assert sched.submit(pinned) == []
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 2, pinned)]


def test_pinned_tasks_run_before_the_general_queue():
    sched = booted(1)
    sched.submit(task("busy"))
    general, pinned = task("general"), task("pinned", pin=1)
    sched.submit(general)
    sched.submit(pinned)
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 2, pinned)]
    assert sched.task_done(1, 2, 0.1) == [Dispatch(1, 3, general)]


def test_task_pinned_to_an_unknown_worker_goes_to_the_general_queue():
    sched = booted(1)
    t = task(pin=42)
    assert sched.submit(t) == [Dispatch(1, 1, t)]


def test_pinned_tasks_are_never_pipelined():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    sched.submit(task("running", fn="quick"))
    pinned = task("pinned", fn="quick", pin=1)
    assert sched.submit(pinned) == []


def test_pinned_tasks_go_to_the_general_queue_when_their_worker_dies():
    sched = booted(2)
    on_1 = task("on-1")
    sched.submit(on_1)
    sched.submit(task("on-2"))
    pinned = task("pinned", pin=1)
    sched.submit(pinned)
    assert sched.worker_died(1, CRASH) == [FailTask(on_1, "crashed", CRASH), StartWorker()]
    assert queued(sched) == [pinned.task_id]  # the replacement gets another id
    assert sched.task_done(2, 2, 0.1) == [Dispatch(2, 3, pinned)]


def test_task_pinned_to_a_worker_retired_by_resize_still_runs():
    sched = booted(2)
    sched.submit(task("on-1"))
    sched.submit(task("on-2"))
    pinned = task("pinned", pin=1)
    sched.submit(pinned)
    assert sched.resize(1) == []
    out = sched.task_done(1, 1, 0.1)
    if StopWorker(1) in out:
        sched.worker_stopped(1)  # what the engine does when the stopped process exits
    out += sched.task_done(2, 2, 0.1)
    assert pinned in [spec for _, spec in dispatched(out)]


# --- 8. resize ------------------------------------------------------------------------------------

def test_growing_the_pool_starts_workers():
    sched = booted(2)
    assert sched.resize(4) == [StartWorker(), StartWorker()]


def test_shrinking_the_pool_stops_idle_workers_at_once():
    sched = booted(3)
    sched.submit(task("busy"))
    assert sched.resize(1) == [StopWorker(2), StopWorker(3)]
    assert sched.submit(task("next")) == []  # not sent to a stopping worker


def test_shrinking_the_pool_retires_busy_workers_when_they_finish():
    sched = booted(2)
    sched.submit(task("a"))
    sched.submit(task("b"))
    assert sched.resize(1) == []
    assert sched.task_done(1, 1, 0.1) == [StopWorker(1)]
    assert sched.task_done(2, 2, 0.1) == []


def test_shrinking_the_pool_leaves_actor_workers_alone():
    sched = booted(2)
    actor_worker = live_actor(sched, actor_create())
    assert sched.resize(0) == [StopWorker(1), StopWorker(2)]
    assert sched.workers[actor_worker].state == "idle"


def test_a_stopped_worker_that_exits_is_not_replaced_by_start():
    sched = booted(2)
    assert sched.resize(1) == [StopWorker(1)]
    sched.worker_stopped(1)
    assert sched.start() == []


# --- 9. actors ------------------------------------------------------------------------------------

def test_create_actor_starts_a_dedicated_worker():
    sched = booted(1)
    create = actor_create("A")
    assert sched.create_actor(create, "Counter", 0, 0) == [StartWorker(actor_id="A")]
    (worker,) = add_started(sched, [StartWorker(actor_id="A")])
    assert sched.actors["A"].worker_id == worker
    assert sched.start() == []  # an actor worker is not part of the pool


def test_actor_creation_is_dispatched_first_then_the_queued_calls():
    sched = booted(0)
    create = actor_create()
    started = sched.create_actor(create, "Counter", 0, 0)
    first, second = actor_call(), actor_call()
    assert sched.submit(first) == []
    assert sched.submit(second) == []
    (worker,) = add_started(sched, started)
    assert ready_worker(sched, worker) == [
        Dispatch(worker, 1, create), Dispatch(worker, 2, first), Dispatch(worker, 3, second)]


def test_actor_creation_waits_for_its_arguments():
    ready: set[str] = set()
    sched = booted(0, ready=ready)
    create = actor_create(refs=("x",))
    (worker,) = add_started(sched, sched.create_actor(create, "Counter", 0, 0))
    call = actor_call()
    assert ready_worker(sched, worker) == []
    assert sched.submit(call) == []
    ready.add("x")
    assert sched.object_ready("x") == [Dispatch(worker, 1, create), Dispatch(worker, 2, call)]


def test_actor_calls_and_regular_tasks_keep_to_their_own_workers():
    sched = booted(1)
    actor_worker = live_actor(sched, actor_create())
    busy, regular = task("busy"), task("regular")
    assert sched.submit(busy) == [Dispatch(1, 2, busy)]
    assert sched.submit(regular) == []  # the idle actor worker does not take it
    call = actor_call()
    assert sched.submit(call) == [Dispatch(actor_worker, 3, call)]


def test_actor_call_waiting_for_an_argument_holds_back_only_its_callers_later_calls():
    ready: set[str] = set()
    sched = booted(0, ready=ready)
    worker = live_actor(sched, actor_create())
    waiting, behind, other = actor_call(refs=("x",)), actor_call(), actor_call()
    assert sched.submit(waiting, caller="driver") == []
    assert sched.submit(behind, caller="driver") == []
    assert sched.submit(other, caller="worker-7") == [Dispatch(worker, 2, other)]
    ready.add("x")
    assert sched.object_ready("x") == [Dispatch(worker, 3, waiting), Dispatch(worker, 4, behind)]


def test_at_most_actor_in_flight_calls_are_sent_to_an_actor():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    calls = [actor_call() for _ in range(ACTOR_IN_FLIGHT + 2)]
    outs = [sched.submit(call) for call in calls]
    assert sum(len(out) for out in outs) == ACTOR_IN_FLIGHT
    assert outs[-2:] == [[], []]
    first_seq = seq_of(sched, calls[0])
    assert sched.task_done(worker, first_seq, 0.01) == [
        Dispatch(worker, first_seq + ACTOR_IN_FLIGHT, calls[ACTOR_IN_FLIGHT])]


def test_constructor_failure_fails_every_sent_and_queued_call():
    sched = booted(0)
    create = actor_create()
    started = sched.create_actor(create, "Counter", 3, 0)
    sent, waiting = actor_call(), actor_call(refs=("x",))
    sched.submit(sent)
    sched.submit(waiting)
    (worker,) = add_started(sched, started)
    assert dispatched(ready_worker(sched, worker)) == [(worker, create), (worker, sent)]
    reason = "its constructor raised ValueError: no"
    assert sched.task_done(worker, 1, None) == []  # the engine: task_done, then this
    assert sched.actor_creation_failed("A", reason) == [
        StopWorker(worker), FailTask(sent, "actor_died", reason),
        FailTask(waiting, "actor_died", reason)]
    later = actor_call()
    assert sched.submit(later) == [FailTask(later, "actor_died", reason)]


def test_kill_actor_kills_its_worker_and_later_calls_fail_at_once():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    assert sched.kill_actor("A") == [KillWorker(worker)]
    later = actor_call()
    assert sched.submit(later) == [
        FailTask(later, "actor_died", "the actor Counter was killed with kill()")]
    assert sched.kill_actor("A") == []  # dead already
    assert sched.kill_actor("no-such-actor") == []


def test_killed_actor_fails_its_sent_calls_when_its_worker_exits():
    sched = booted(0)
    worker = live_actor(sched, actor_create(), max_restarts=5)
    sent = actor_call()
    sched.submit(sent)
    sched.kill_actor("A")
    assert sched.worker_died(worker, "worker 1 died with SIGKILL while running add") == [
        FailTask(sent, "actor_died", "the actor Counter was killed with kill()")]


def test_actor_restart_fails_the_running_call_and_resends_later_ones_in_order():
    ready: set[str] = set()
    sched = booted(0, ready=ready)
    create = actor_create()
    worker = live_actor(sched, create, max_restarts=1)
    running, second, third = actor_call(), actor_call(), actor_call()
    waiting = actor_call(refs=("x",))
    for call in (running, second, third, waiting):
        sched.submit(call)
    died = f"worker {worker} (pid 101) died with SIGKILL while running Counter.add"
    assert sched.worker_died(worker, died) == [
        FailTask(running, "actor_died", f"the actor Counter's {died}"),
        StartWorker(actor_id="A")]
    (new_worker,) = add_started(sched, [StartWorker(actor_id="A")])
    assert dispatched(ready_worker(sched, new_worker)) == [
        (new_worker, rerun(create)), (new_worker, second), (new_worker, third)]
    ready.add("x")
    assert dispatched(sched.object_ready("x")) == [(new_worker, waiting)]


def test_actor_restart_keeps_each_callers_order():
    sched = booted(0)
    worker = live_actor(sched, actor_create(), max_restarts=1)
    running = actor_call()
    driver_calls = [actor_call(), actor_call()]
    worker_calls = [actor_call(), actor_call()]
    sched.submit(running, caller="driver")
    for driver_call, worker_call in zip(driver_calls, worker_calls):
        sched.submit(driver_call, caller="driver")
        sched.submit(worker_call, caller="worker-7")
    sched.worker_died(worker, CRASH)
    (new_worker,) = add_started(sched, [StartWorker(actor_id="A")])
    sent = [spec for _, spec in dispatched(ready_worker(sched, new_worker))][1:]
    assert [c for c in sent if c in driver_calls] == driver_calls
    assert [c for c in sent if c in worker_calls] == worker_calls


def test_actor_call_retries_come_from_max_task_retries_not_the_spec():
    sched = booted(0)
    create = actor_create()
    worker = live_actor(sched, create, max_restarts=1)
    running, later = actor_call(retries=1), actor_call()
    sched.submit(running)
    sched.submit(later)
    out = sched.worker_died(worker, CRASH)
    assert [type(i).__name__ for i in out] == ["FailTask", "StartWorker"]
    (new_worker,) = add_started(sched, [StartWorker(actor_id="A")])
    assert dispatched(ready_worker(sched, new_worker)) == [
        (new_worker, rerun(create)), (new_worker, later)]


def test_max_task_retries_resends_the_running_call_after_a_restart():
    sched = booted(0)
    worker = live_actor(sched, actor_create(), max_restarts=1, max_task_retries=1)
    running = actor_call()  # max_retries=0, as actors.py builds every call
    sched.submit(running)
    assert sched.worker_died(worker, CRASH) == [StartWorker(actor_id="A")]


def test_force_cancelled_actor_call_fails_as_cancelled_when_its_worker_exits():
    sched = booted(0)
    worker = live_actor(sched, actor_create(), max_restarts=1)
    running = actor_call()
    sched.submit(running)
    assert sched.cancel(running.task_id, force=True) == [KillWorker(worker)]
    out = sched.worker_died(worker, CRASH)
    assert failed(out) == [(running, "cancelled")]


def test_cancelling_a_waiting_actor_call_lets_the_callers_next_call_run():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    waiting, behind = actor_call(refs=("x",)), actor_call()
    sched.submit(waiting)
    sched.submit(behind)
    out = sched.cancel(waiting.task_id, force=False)
    assert failed(out) == [(waiting, "cancelled")]
    assert dispatched(out) == [(worker, behind)]


def test_actor_dies_for_good_when_its_restarts_are_used_up():
    sched = booted(0)
    create = actor_create()
    worker = live_actor(sched, create, max_restarts=1)
    assert sched.worker_died(worker, CRASH) == [StartWorker(actor_id="A")]
    (worker,) = add_started(sched, [StartWorker(actor_id="A")])
    assert dispatched(ready_worker(sched, worker)) == [(worker, rerun(create))]
    sched.task_done(worker, 2, 0.01)
    call = actor_call()
    sched.submit(call)
    reason = f"the actor Counter's {CRASH}"
    assert sched.worker_died(worker, CRASH) == [FailTask(call, "actor_died", reason)]
    assert sched.actors["A"].state == "dead"


def test_actor_without_restarts_fails_every_sent_and_queued_call_when_its_worker_dies():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    running, sent, waiting = actor_call(), actor_call(), actor_call(refs=("x",))
    for call in (running, sent, waiting):
        sched.submit(call)
    reason = f"the actor Counter's {CRASH}"
    assert sched.worker_died(worker, CRASH) == [
        FailTask(running, "actor_died", reason), FailTask(sent, "actor_died", reason),
        FailTask(waiting, "actor_died", reason)]
    later = actor_call()
    assert sched.submit(later) == [FailTask(later, "actor_died", reason)]


def test_release_actor_stops_an_idle_actor_at_once():
    sched = booted(0)
    worker = live_actor(sched, actor_create())
    assert sched.release_actor("A") == [StopWorker(worker)]
    assert "A" not in sched.actors
    later = actor_call()
    assert sched.submit(later) == [
        FailTask(later, "actor_died", "the actor does not exist (any more)")]


def test_release_actor_runs_the_calls_already_queued_first():
    ready: set[str] = set()
    sched = booted(0, ready=ready)
    worker = live_actor(sched, actor_create())
    sent, waiting = actor_call(), actor_call(refs=("x",))
    sched.submit(sent)
    sched.submit(waiting)
    assert sched.release_actor("A") == []
    assert sched.task_done(worker, 2, 0.01) == []  # "waiting" still waits for x
    ready.add("x")
    assert sched.object_ready("x") == [Dispatch(worker, 3, waiting)]
    assert sched.task_done(worker, 3, 0.01) == [StopWorker(worker)]


def test_worker_ready_of_an_actor_that_is_gone_stops_the_worker():
    sched = booted(0)
    create = actor_create()
    (worker,) = add_started(sched, sched.create_actor(create, "Counter", 0, 0))
    assert sched.release_actor("A") == [StopWorker(worker)]
    assert ready_worker(sched, worker) == [StopWorker(worker)]


# --- 10. running_task / task_of_run ---------------------------------------------------------------

def test_running_task_and_task_of_run_follow_dispatch_and_task_done():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    first, second = task("first", fn="quick"), task("second", fn="quick")
    sched.submit(first)
    sched.submit(second)
    assert sched.running_task(1) == first
    assert (sched.task_of_run(2), sched.task_of_run(3)) == (first, second)
    sched.task_done(1, 2, SHORT)
    assert sched.running_task(1) == second
    assert sched.task_of_run(2) is None
    sched.task_done(1, 3, SHORT)
    assert sched.running_task(1) is None
    assert sched.task_of_run(3) is None


def test_running_task_of_an_idle_or_unknown_worker_is_none():
    sched = booted(1)
    assert sched.running_task(1) is None
    assert sched.running_task(99) is None
    assert sched.task_of_run(99) is None


def test_a_dead_workers_runs_are_forgotten():
    sched = booted(1)
    t = task(retries=1)
    sched.submit(t)
    sched.worker_died(1, CRASH)
    assert sched.running_task(1) is None
    assert sched.task_of_run(1) is None
    assert seq_of(sched, t) is None


# --- batches: one entry for several tasks (backends.local.batches) --------------------------------

def test_a_batch_run_takes_one_seq_per_task_and_the_next_run_follows_them():
    sched = booted(1)
    batch, after = task("f+batch"), task("g")
    assert sched.submit_plain([batch, after], {batch.task_id: 5}) == [Dispatch(1, 1, batch)]
    assert sched.task_done(1, 1, 0.01) == [Dispatch(1, 6, after)]
    assert sched.next_seq == 7


def test_note_duration_teaches_how_many_runs_a_worker_may_hold():
    sched = booted(1)
    assert sched.depth_of("f") == 1  # not known to be short
    sched.note_duration("f", SHORT)
    assert sched.depth_of("f") == PREFETCH_DEPTH
    sched.note_duration("f", LONG)
    assert sched.depth_of("f") == 1  # one slow run makes it long again (0.7 / 0.3 average)


def test_run_of_is_the_seq_of_a_sent_task_and_none_for_a_queued_one():
    sched = booted(1)
    first, second = task("a"), task("b")
    sched.submit(first)
    sched.submit(second)
    assert sched.run_of(first.task_id) == 1
    assert sched.run_of(second.task_id) is None
    assert sched.run_of("unknown") is None
