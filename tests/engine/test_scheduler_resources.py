"""Resources in the pure scheduler: CPUs, GPUs and custom names held while tasks run and
for an actor's life, as Ray counts them (every event is checked by ``validate_state``)."""

from __future__ import annotations

import dataclasses

from distkernel.core.protocol import TaskSpec
from distkernel.engine.scheduler import Dispatch, FailTask, StartWorker
from tests.engine.test_scheduler import (
    SHORT,
    actor_create,
    add_started,
    booted,
    dispatched,
    learn,
    ready_worker,
    task,
)


def needing(name: str = "f", **resources: float) -> TaskSpec:
    """A task asking for ``resources`` (CPU=..., GPU=..., or custom names)."""
    return dataclasses.replace(task(name), resources=tuple(resources.items()))


def test_a_task_asking_for_two_cpus_takes_two_slots():
    sched = booted(2)
    wide, plain = needing("wide", CPU=2), task("plain")
    assert sched.submit(wide) == [Dispatch(1, 1, wide)]
    assert sched.submit(plain) == []  # worker 2 is idle, but no CPU is free
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 2, plain)]


def test_a_custom_resource_limits_how_many_run_at_once():
    sched = booted(3, resources={"db": 1})
    first, second = needing("q1", CPU=1, db=1), needing("q2", CPU=1, db=1)
    other = task("other")
    assert sched.submit(first) == [Dispatch(1, 1, first)]
    assert sched.submit(second) == []
    assert sched.submit(other) == [Dispatch(2, 2, other)]  # not held up by the waiting one
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 3, second)]


def test_tasks_needing_no_cpu_run_beyond_the_cpu_count_on_extra_workers():
    sched = booted(1)
    busy, light = task("busy"), needing("light", CPU=0)
    assert sched.submit(busy) == [Dispatch(1, 1, busy)]
    assert sched.submit(light) == [StartWorker(extra=True)]
    (extra,) = add_started(sched, [StartWorker(extra=True)])
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, light)]


def test_fractions_of_a_cpu_share_it():
    sched = booted(1)
    halves = [needing(f"half{i}", CPU=0.5) for i in range(3)]
    assert sched.submit(halves[0]) == [Dispatch(1, 1, halves[0])]
    assert sched.submit(halves[1]) == [StartWorker(extra=True)]
    (extra,) = add_started(sched, [StartWorker(extra=True)])
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, halves[1])]
    assert sched.submit(halves[2]) == []  # the one CPU is taken by the two halves


def test_an_infeasible_task_fails_at_once_saying_why():
    sched = booted(2, resources={"GPU": 1})
    for spec, words in [(needing("big", CPU=4), "needs 4 CPUs and the cluster has 2"),
                        (needing("gpus", CPU=1, GPU=2), "needs 2 GPUs and the cluster has 1"),
                        (needing("odd", CPU=1, tpu=1), "'tpu' and the cluster has 0")]:
        (failure,) = sched.submit(spec)
        assert isinstance(failure, FailTask) and failure.reason == "infeasible"
        assert words in failure.message
    assert not sched.tasks


def test_whole_gpus_are_handed_out_by_device_and_fractions_share_one():
    sched = booted(3, resources={"GPU": 2})
    a, b, c = (needing(n, CPU=1, GPU=1) for n in "abc")
    first, second = sched.submit(a), sched.submit(b)
    assert {first[0].gpu_ids, second[0].gpu_ids} == {(0,), (1,)}
    assert sched.submit(c) == []
    assert sched.task_done(first[0].worker_id, first[0].seq, 0.1)[0].gpu_ids == \
        first[0].gpu_ids
    sched2 = booted(2, resources={"GPU": 1})
    halves = [needing(f"h{i}", CPU=1, GPU=0.5) for i in range(2)]
    out = [sched2.submit(h)[0] for h in halves]
    assert [d.gpu_ids for d in out] == [(0,), (0,)]


def test_a_task_blocked_in_get_gives_its_cpu_back_until_it_resumes():
    sched = booted(1)
    parent, child = task("parent"), task("child")
    sched.submit(parent)
    sched.submit(child)
    assert sched.resources.in_use["CPU"] == 1
    (extra,) = add_started(sched, sched.worker_blocked(1))
    assert ready_worker(sched, extra) == [Dispatch(extra, 2, child)]
    assert sched.resources.in_use["CPU"] == 1  # the child's
    sched.worker_unblocked(1)
    assert sched.resources.in_use["CPU"] == 2  # the parent's again, for a moment over


def test_pipelined_runs_take_over_the_cpu_of_the_run_ahead():
    sched = booted(1)
    learn(sched, "quick", SHORT)
    runs = [task(n, fn="quick") for n in ("one", "two", "three")]
    out = [d for t in runs for d in sched.submit(t)]
    assert [spec for _, spec in dispatched(out)] == runs  # sent ahead to worker 1
    assert sched.resources.in_use["CPU"] == 1
    for dispatch in out:
        sched.task_done(1, dispatch.seq, SHORT)
        assert sched.resources.in_use.get("CPU", 0) <= 1
    assert sched.resources.in_use.get("CPU", 0) == 0


def test_tasks_asking_for_more_than_one_cpu_are_never_pipelined():
    sched = booted(2)
    learn(sched, "quick", SHORT)
    first = task("first", fn="quick")
    wide = dataclasses.replace(task("wide", fn="quick"), resources=(("CPU", 1.0), ("db", 0)))
    assert sched.submit(first) == [Dispatch(1, 2, first)]
    assert sched.submit(wide) == [Dispatch(2, 3, wide)]  # an idle worker, not a pipeline


def test_an_actor_holds_its_resources_for_its_life():
    sched = booted(2)
    create = actor_create("A")
    assert sched.create_actor(create, "Counter", 0, 0, {"CPU": 1}) == \
        [StartWorker(actor_id="A")]
    (worker,) = add_started(sched, [StartWorker(actor_id="A")])
    ready_worker(sched, worker)
    one, two = task("one"), task("two")
    assert sched.submit(one) == [Dispatch(1, 2, one)]
    assert sched.submit(two) == []  # one CPU of two is the actor's
    out = sched.kill_actor("A") + sched.worker_died(worker, "killed")
    assert Dispatch(2, 3, two) in out


def test_an_actor_waits_to_start_until_its_resources_are_free():
    sched = booted(1)
    running = task("running")
    sched.submit(running)
    create = actor_create("B")
    assert sched.create_actor(create, "Counter", 0, 0, {"CPU": 1}) == []
    assert sched.task_done(1, 1, 0.1) == [StartWorker(actor_id="B")]


def test_an_actor_asking_for_what_the_cluster_lacks_fails_at_once():
    sched = booted(1)
    (failure,) = sched.create_actor(actor_create("C"), "Counter", 0, 0, {"GPU": 1})
    assert failure.reason == "infeasible" and "Counter can never start here" in failure.message


def test_resizing_the_pool_resizes_its_cpus():
    sched = booted(1)
    wide = needing("wide", CPU=2)
    (failure,) = sched.submit(wide)
    assert failure.reason == "infeasible"
    add_started(sched, sched.resize(2))
    assert sched.resources.capacity["CPU"] == 2
    wide2 = needing("wide2", CPU=2)
    assert sched.submit(wide2) == [Dispatch(1, 1, wide2)]


def test_older_tasks_go_first_across_plain_and_special_ones():
    sched = booted(1, resources={"db": 2})
    running = task("running")
    sched.submit(running)
    special, plain = needing("special", CPU=1, db=1), task("plain")
    sched.submit(special)
    sched.submit(plain)
    assert sched.task_done(1, 1, 0.1) == [Dispatch(1, 2, special)]
    assert sched.task_done(1, 2, 0.1) == [Dispatch(1, 3, plain)]
