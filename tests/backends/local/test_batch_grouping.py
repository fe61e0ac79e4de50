"""How a burst's plain tasks are cut into batches (``batches.Grouper``), without processes:
consecutive calls of one function with the same options and cell, as many as half the runs
a worker may hold of it; anything else runs alone."""

from __future__ import annotations

import itertools

from distkernel.backends.local.batches import BATCH_KEY, MAX_BATCH, Batches, Grouper
from distkernel.core.protocol import InlineValue, TaskSpec

_ids = itertools.count(1)


def call(fn: str = "f", *, kind: str = "task", retries: int = 3,
         retry_exceptions: bool = False, name: str | None = None) -> TaskSpec:
    task_id = f"t{next(_ids)}"
    return TaskSpec(task_id, name or fn, kind, fn, InlineValue(b"x"), (), (f"{task_id}.out",),
                    retries, retry_exceptions=retry_exceptions)  # type: ignore[arg-type]


def grouped(calls, depths, cells=None):
    batches = Batches()
    grouper = Grouper(batches, lambda fn: depths.get(fn, 1))
    for index, spec in enumerate(calls):
        grouper.add(spec, (cells or {}).get(index))
    grouper.finish()
    return grouper, batches


def shape(grouper, batches):
    """Each entry the scheduler gets: a task id, or the task ids of a batch's members."""
    return [list(batches.by_id[s.task_id].pending) if s.task_id in batches.by_id else s.task_id
            for s in grouper.specs]


def test_calls_of_a_short_function_go_in_batches_of_half_its_depth():
    calls = [call() for _ in range(7)]
    grouper, batches = grouped(calls, {"f": 6})
    ids = [c.task_id for c in calls]
    assert shape(grouper, batches) == [ids[0:3], ids[3:6], ids[6]]
    entry = grouper.specs[0]
    assert entry.function_hash == "f" + BATCH_KEY and entry.return_ids == ()
    assert entry.max_retries == 3
    assert grouper.sizes == {grouper.specs[0].task_id: 3, grouper.specs[1].task_id: 3}
    assert all(batches.of(i) is batches.by_id[grouper.specs[0].task_id] for i in ids[0:3])


def test_a_batch_holds_at_most_max_batch_calls():
    calls = [call() for _ in range(MAX_BATCH + 1)]
    grouper, _ = grouped(calls, {"f": 100})
    assert list(grouper.sizes.values()) == [MAX_BATCH]
    assert grouper.specs[-1] is calls[-1]


def test_calls_of_functions_not_known_to_be_short_run_alone():
    calls = [call("slow") for _ in range(4)] + [call("medium") for _ in range(2)]
    grouper, batches = grouped(calls, {"medium": 3})  # 3 // 2 = 1: no batch
    assert grouper.specs == calls
    assert not batches


def test_another_function_option_or_cell_starts_a_new_batch():
    calls = [call(), call(), call("g"), call("g"), call(retries=0), call(retries=0),
             call(name="renamed"), call(name="renamed"), call(), call()]
    grouper, batches = grouped(calls, {"f": 8, "g": 8}, cells={9: "cell-2"})
    ids = [c.task_id for c in calls]
    assert shape(grouper, batches) == [ids[0:2], ids[2:4], ids[4:6], ids[6:8], ids[8], ids[9]]


def test_cells_and_calls_retried_on_exceptions_run_alone():
    calls = [call(kind="cell"), call(kind="cell"), call(retry_exceptions=True),
             call(retry_exceptions=True)]
    grouper, batches = grouped(calls, {"f": 8})
    assert grouper.specs == calls
    assert not batches
