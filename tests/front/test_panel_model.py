"""What the side panel is sent, from a real cluster's snapshot and timeline: JSON, bounded
whatever the history, tasks tied to their cells, the stream limited to the last minute."""

from __future__ import annotations

import dataclasses
import json
import time

import distkernel as dk
from distkernel.api import runtime
from distkernel.core.timings import TaskRecord
from distkernel.front import panel_model


@dk.remote
def double(x):
    return 2 * x


def record(i: int, *, finished: float | None, worker: int | None = 1) -> TaskRecord:
    started = None if worker is None else (finished or time.time()) - 0.01
    return TaskRecord(f"t{i}", "f", "task", worker, started or time.time(), started, finished,
                      "finished" if finished else "running", 10, 20, None)


def test_an_update_of_a_real_cluster_is_json_and_names_cells(cluster):
    assert dk.get([double.remote(i) for i in range(30)]) == [2 * i for i in range(30)]
    engine = runtime.engine()
    records = engine.timeline(last=100)
    update = panel_model.update(engine.snapshot(), records, lambda task_id: "cell-a",
                                {"cell-a": 7}.get, 12.5)
    decoded = json.loads(json.dumps(update))
    assert decoded["version"] == panel_model.VERSION
    assert decoded["cluster"]["num_workers"] == 2
    assert len(decoded["cluster"]["workers"]) >= 2
    assert decoded["cluster"]["counters"]["finished"] >= 30
    assert decoded["rate"] == 12.5
    assert [t["cell"] for t in decoded["tasks"]] == [7] * len(decoded["tasks"])
    assert decoded["tasks"][0]["id"] == records[-1].task_id  # newest first
    lanes = {bar[0] for bar in decoded["stream"]}
    assert lanes and lanes <= {w["id"] for w in decoded["cluster"]["workers"]}


@dk.remote
def ones(n):
    import numpy as np

    return np.ones(n)


def test_the_largest_objects_say_who_made_them_and_in_which_cell(cluster):
    import numpy as np

    engine = runtime.engine()
    engine.route_output(lambda: "cell-9", lambda *output: None)
    kept = [dk.put(np.ones(300_000)), ones.remote(500_000), dk.put(7)]
    dk.get(kept[1])
    snapshot = engine.snapshot()
    largest = snapshot.store.largest
    assert [(o.nbytes > 4_000_000, o.made_by, o.cell) for o in largest] == [
        (True, "ones", "cell-9"), (False, "put", "cell-9")]  # the small put is not listed
    update = panel_model.update(snapshot, [], lambda task_id: None, {"cell-9": 4}.get, None)
    assert [(o["made_by"], o["cell"]) for o in update["cluster"]["store"]["largest"]] == [
        ("ones", 4), ("put", 4)]
    del kept


def test_no_cluster_says_so():
    update = panel_model.update(None, [], lambda task_id: None, lambda tag: None, None)
    assert update["cluster"] is None and update["tasks"] == [] and update["stream"] == []


def test_an_update_is_bounded_whatever_the_history(cluster):
    now = time.time()
    many = [record(i, finished=now - 1) for i in range(5000)]
    update = panel_model.update(runtime.engine().snapshot(), many, lambda task_id: None,
                                lambda tag: None, None)
    assert len(update["tasks"]) == panel_model.RECENT_TASKS
    assert len(update["stream"]) == panel_model.STREAM_MAX
    assert update["stream"][-1][1] == many[-1].started  # the newest bars are kept


def test_the_stream_shows_the_last_minute_and_running_tasks():
    now = time.time()
    old = record(1, finished=now - panel_model.STREAM_SECONDS - 5)
    recent = record(2, finished=now - 2)
    running = record(3, finished=None)
    queued = dataclasses.replace(record(4, finished=None, worker=None), status="pending")
    bars = panel_model.stream_bars([old, recent, running, queued], now)
    assert [bar[2] for bar in bars] == [recent.finished, None]
    assert bars[1][4] == "running"
