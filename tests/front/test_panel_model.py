"""What the side panel is sent, from a real cluster's snapshot and timeline: JSON, bounded
whatever the history, tasks tied to their cells, the stream limited to the last minute; and,
from snapshots built as the Ray engine builds them, the nodes that take the workers' place."""

from __future__ import annotations

import dataclasses
import json
import time

import distkernel as dk
from distkernel.api import runtime
from distkernel.backends.snapshot import (
    ClusterSnapshot,
    Counters,
    NodeSnapshot,
    StoreSnapshot,
    WorkerSnapshot,
)
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


def cluster_of(backend: str, nodes: tuple[NodeSnapshot, ...]) -> ClusterSnapshot:
    """A snapshot as an engine would give it: on Ray a worker row per live node."""
    workers = tuple(WorkerSnapshot(node.index, None, "idle", None, None, None, None, False,
                                   None, None) for node in nodes if node.alive)
    return ClusterSnapshot(backend, "c0", 100.0, 160.0, 3, workers, (),
                           StoreSnapshot(8 << 30, 1 << 20, 3, 0, 0), 0, 1,
                           (("CPU", 3.0),), (("CPU", 2.0),), Counters(5, 4, 0, 0), nodes)


HEAD = NodeSnapshot(1, "a" * 56, "10.0.0.1", True,
                    (("CPU", 2.0), ("head", 1.0), ("memory", 16e9),
                     ("object_store_memory", 4e9)),
                    (("CPU", 1.5), ("head", 1.0), ("memory", 16e9),
                     ("object_store_memory", 3e9)))
# All its CPUs taken: Ray then lists no free CPU at all.
BUSY = NodeSnapshot(2, "b" * 56, "10.0.0.2", True,
                    (("CPU", 1.0), ("GPU", 1.0), ("memory", 8e9), ("object_store_memory", 2e9)),
                    (("GPU", 1.0), ("memory", 8e9), ("object_store_memory", 2e9)))
GONE = NodeSnapshot(3, "c" * 56, "10.0.0.3", False, (("CPU", 4.0),), (("CPU", 4.0),))


def test_a_ray_clusters_nodes_are_sent_with_their_resources():
    update = panel_model.update(cluster_of("ray", (HEAD, BUSY, GONE)), [],
                                lambda task_id: None, lambda tag: None, None)
    nodes = json.loads(json.dumps(update))["cluster"]["nodes"]
    assert nodes[0] == {"index": 1, "id": "a" * 56, "address": "10.0.0.1", "alive": True,
                        "cpus": 2.0, "cpus_free": 1.5, "gpus": 0.0, "gpus_free": 0.0,
                        "memory": 16_000_000_000, "memory_free": 16_000_000_000,
                        "store": 4_000_000_000, "store_free": 3_000_000_000}
    assert (nodes[1]["cpus"], nodes[1]["cpus_free"], nodes[1]["gpus"], nodes[1]["gpus_free"]) \
        == (1.0, 0.0, 1.0, 1.0)
    assert [(n["index"], n["alive"]) for n in nodes] == [(1, True), (2, True), (3, False)]


def test_one_ray_node_is_shown_as_a_node():
    update = panel_model.update(cluster_of("ray", (HEAD,)), [], lambda task_id: None,
                                lambda tag: None, None)
    assert [n["address"] for n in update["cluster"]["nodes"]] == ["10.0.0.1"]


def test_the_local_engine_sends_no_nodes(cluster):
    snapshot = runtime.engine().snapshot()
    assert snapshot.backend == "local"
    update = panel_model.update(snapshot, [], lambda task_id: None, lambda tag: None, None)
    assert update["cluster"]["nodes"] == []
    assert len(update["cluster"]["workers"]) >= 2  # its workers table stays
    # Even if it named its one machine, that one node is no table of its own.
    assert panel_model.shown_nodes(dataclasses.replace(snapshot, nodes=(HEAD,))) == ()
    # Any engine with several machines gets the table.
    assert panel_model.shown_nodes(cluster_of("other", (HEAD, BUSY))) == (HEAD, BUSY)
