"""Task records: a copy handed out is the record as it was, not the engine's live one."""

from __future__ import annotations

import dataclasses

from distkernel.core.timings import TaskRecord, Timeline


def test_a_copy_has_every_field_and_does_not_follow_the_original():
    record = TaskRecord("t1", "f", "task", 2, 10.0, 10.5, None, "running", 100, 0, None)
    copied = record.copy()
    assert dataclasses.astuple(copied) == dataclasses.astuple(record)
    assert [f.name for f in dataclasses.fields(TaskRecord)] == [
        "task_id", "name", "kind", "worker_id", "submitted", "started", "finished", "status",
        "bytes_in", "bytes_out", "error"]  # copy() names them all: a new field breaks this
    record.finished, record.status = 11.0, "finished"
    assert copied.finished is None and copied.status == "running"


def test_a_timeline_keeps_the_newest_records():
    timeline = Timeline(3)
    records = [TaskRecord(f"t{i}", "f", "task", 1, i, i, i + 1, "finished", 0, 0, None)
               for i in range(5)]
    for record in records:
        timeline.add(record)
    assert [r.task_id for r in timeline.last()] == ["t2", "t3", "t4"]
    assert [r.task_id for r in timeline.last(2)] == ["t3", "t4"]
    assert timeline.last(0) == []
