"""What the side panel is sent: a compact, JSON-ready picture of the cluster and its tasks.

Pure functions of an engine's ``snapshot()`` and ``timeline()``: the size of one
update is bounded (``RECENT_TASKS`` rows, ``STREAM_MAX`` bars), whatever the history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distkernel.backends.snapshot import ClusterSnapshot, NodeSnapshot
from distkernel.core.timings import TaskRecord

#: Rows of the panel's task table.
RECENT_TASKS = 50
#: The task stream covers this many seconds ...
STREAM_SECONDS = 60.0
#: ... and at most this many bars.
STREAM_MAX = 400
#: Bumped when the shape of an update changes; the panel checks it. (Fields added that an
#: older panel can ignore, as ``nodes``, keep it.)
VERSION = 1
#: Engines whose worker rows are machines (a task's ``worker_id`` is its node's number).
NODE_BACKENDS = frozenset({"ray"})

#: The notebook cell number (``In [n]``) a task's cell tag stands for, if known.
CellNumber = Callable[[str], "int | None"]


def cluster_part(snapshot: ClusterSnapshot,
                 cell_number: CellNumber = lambda tag: None) -> dict[str, Any]:
    """Workers, actors, store, queue, counters and (see ``shown_nodes``) nodes, with short
    keys."""
    return {
        "backend": snapshot.backend, "cluster_id": snapshot.cluster_id,
        "started_at": snapshot.started_at, "taken_at": snapshot.taken_at,
        "num_workers": snapshot.num_workers, "queued": snapshot.queued,
        "running": snapshot.running,
        "workers": [{"id": w.worker_id, "pid": w.pid, "state": w.state, "task": w.current_task,
                     "task_id": w.current_task_id, "since": w.task_started,
                     "actor": w.actor_id, "extra": w.extra, "cpu": w.cpu_percent,
                     "rss": w.rss} for w in snapshot.workers],
        "actors": [{"id": a.actor_id, "class": a.class_name, "name": a.name, "state": a.state,
                    "worker": a.worker_id, "queued": a.queued_calls, "restarts": a.restarts}
                   for a in snapshot.actors],
        "store": {"capacity": snapshot.store.capacity, "used": snapshot.store.used_bytes,
                  "objects": snapshot.store.num_objects,
                  "spilled_bytes": snapshot.store.spilled_bytes,
                  "spilled_objects": snapshot.store.spilled_objects,
                  "largest": [{"id": o.object_id, "bytes": o.nbytes, "made_by": o.made_by,
                               "cell": cell_number(o.cell) if o.cell is not None else None}
                              for o in snapshot.store.largest]},
        "counters": {"submitted": snapshot.counters.submitted,
                     "finished": snapshot.counters.finished,
                     "failed": snapshot.counters.failed,
                     "cancelled": snapshot.counters.cancelled},
        "nodes": [node_row(node) for node in shown_nodes(snapshot)],
    }


def shown_nodes(snapshot: ClusterSnapshot) -> tuple[NodeSnapshot, ...]:
    """The nodes the panel shows in place of its workers table; () keeps the workers table.

    On Ray a "worker" row of the snapshot is a node (no pid, task, CPU % or RSS of its own)
    and tasks are placed per node, so the panel shows the nodes there, also when there is
    one: a one-row "workers" table of dashes would read as a pool of one process. The local
    engine's workers are processes of this one machine, with their own state, task, CPU
    and memory; it reports no nodes, and a table of this one machine would only repeat the
    store and pool figures, so its panel stays as it is. Any engine reporting more than one
    node gets the table too: then where a task ran is a machine.
    """
    if snapshot.backend in NODE_BACKENDS or len(snapshot.nodes) > 1:
        return snapshot.nodes
    return ()


def node_row(node: NodeSnapshot) -> dict[str, Any]:
    """One node: its resources, total and free (CPUs and GPUs in units, memory and object
    store in bytes; a resource Ray lists no free amount of is all taken)."""
    total, free = dict(node.resources_total), dict(node.resources_available)
    row: dict[str, Any] = {"index": node.index, "id": node.node_id, "address": node.address,
                           "alive": node.alive}
    for key, resource, unit in (("cpus", "CPU", float), ("gpus", "GPU", float),
                                ("memory", "memory", int),
                                ("store", "object_store_memory", int)):
        amount = total.get(resource, 0.0)
        row[key] = unit(amount)
        row[f"{key}_free"] = unit(min(free.get(resource, 0.0), amount))
    return row


def task_rows(records: Sequence[TaskRecord], cell_of: Callable[[str], str | None],
              cell_number: CellNumber) -> list[dict[str, Any]]:
    """The newest RECENT_TASKS records, newest first, each with its cell's number."""
    rows = []
    for record in reversed(records[-RECENT_TASKS:]):
        tag = cell_of(record.task_id)
        rows.append({"id": record.task_id, "name": record.name, "kind": record.kind,
                     "worker": record.worker_id, "submitted": record.submitted,
                     "started": record.started, "finished": record.finished,
                     "status": record.status, "bytes_in": record.bytes_in,
                     "bytes_out": record.bytes_out, "error": record.error,
                     "cell": cell_number(tag) if tag is not None else None})
    return rows


def stream_bars(records: Sequence[TaskRecord], now: float) -> list[list[Any]]:
    """Bars of the task stream: ``[worker, start, end or None, name, status]`` of the
    tasks that ran within the last STREAM_SECONDS (``end`` None: still running)."""
    since = now - STREAM_SECONDS
    bars: list[list[Any]] = []
    for record in reversed(records):
        if record.worker_id is None or record.started is None:
            continue
        if record.finished is not None and record.finished < since:
            continue
        bars.append([record.worker_id, record.started, record.finished, record.name,
                     record.status])
        if len(bars) >= STREAM_MAX:
            break
    bars.reverse()
    return bars


def update(snapshot: ClusterSnapshot | None, records: Sequence[TaskRecord],
           cell_of: Callable[[str], str | None], cell_number: CellNumber,
           rate: float | None) -> dict[str, Any]:
    """One message to the panel; ``snapshot`` None: no cluster runs in this kernel."""
    if snapshot is None:
        return {"type": "update", "version": VERSION, "cluster": None, "tasks": [],
                "stream": [], "rate": None}
    return {"type": "update", "version": VERSION,
            "cluster": cluster_part(snapshot, cell_number),
            "tasks": task_rows(records, cell_of, cell_number),
            "stream": stream_bars(records, snapshot.taken_at), "rate": rate}
