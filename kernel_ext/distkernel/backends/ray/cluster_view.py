"""What ``%dist status`` and the side panel show of a Ray cluster: its nodes (with their
CPUs, memory and object store, numbered as the task records number them), a worker row
per live node, and the actors this driver holds, as Ray's own tables have them now.

Asked at every panel update: one query for the nodes' free resources, one for this job's
actors (another job's, found by name, one by one), at most ACTORS_SHOWN of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from distkernel.backends.snapshot import ActorSnapshot, NodeSnapshot, WorkerSnapshot

if TYPE_CHECKING:
    from distkernel.engine.scheduler_types import ActorStateName, WorkerStateName

#: How many actors a snapshot describes (Ray answers for each separately).
ACTORS_SHOWN = 100
#: Ray's actor states, as ours.
_ACTOR_STATES: dict[str, ActorStateName] = {"ALIVE": "alive", "DEAD": "dead"}


def nodes(node_index: Callable[[str], int]) -> tuple[NodeSnapshot, ...]:
    """Every node Ray knows, numbered by ``node_index`` (as the records number them)."""
    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except Exception:  # noqa: BLE001 - an internal API of Ray: without it, totals only
        free = {}
    described = []
    for node in ray.nodes():
        node_id = str(node.get("NodeID", ""))
        total = {k: float(v) for k, v in node.get("Resources", {}).items()
                 if not k.startswith("node:")}
        available = {k: float(v) for k, v in free.get(node_id, total).items()
                     if not k.startswith("node:")}
        described.append(NodeSnapshot(
            node_index(node_id), node_id, str(node.get("NodeManagerAddress", "")),
            bool(node.get("Alive")), tuple(sorted(total.items())),
            tuple(sorted(available.items()))))
    return tuple(sorted(described, key=lambda node: node.index))


def node_workers(described: tuple[NodeSnapshot, ...]) -> tuple[WorkerSnapshot, ...]:
    """A worker row per live node: on Ray a task's worker_id is its node's number."""
    return tuple(
        WorkerSnapshot(node.index, None, _node_state(node), None, None, None, None, False,
                       None, None)
        for node in described if node.alive)


def _node_state(node: NodeSnapshot) -> WorkerStateName:
    """Busy while some of the node's CPUs are taken, else idle."""
    return "busy" if dict(node.resources_available).get("CPU", 0.0) < \
        dict(node.resources_total).get("CPU", 0.0) else "idle"


def actor_rows(held: list[tuple[str, str, Any]],
               node_index: Callable[[str], int]) -> tuple[ActorSnapshot, ...]:
    """The actors held, each ``(our id, class name, Ray's handle)``, as Ray's actor table
    has them now (at most ACTORS_SHOWN)."""
    from ray._private import state

    try:  # this job's actors in one query; another job's (found by name) one by one
        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        table = state.actors(job_id=job)
    except Exception:  # noqa: BLE001 - asked one by one below
        table = {}
    rows = []
    for actor_id, class_name, handle in held[:ACTORS_SHOWN]:
        row = table.get(handle._actor_id.hex())
        if row is None:
            try:
                row = state.actors(actor_id=handle._actor_id.hex())
            except Exception:  # noqa: BLE001 - not known (yet, or any more): not shown
                continue
        node = row.get("Address", {}).get("NodeID")
        rows.append(ActorSnapshot(
            actor_id, row.get("ActorClassName") or class_name, row.get("Name") or "",
            _ACTOR_STATES.get(row.get("State", ""), "starting"),
            node_index(node) if node else None, row.get("Pid") or None, 0,
            int(row.get("NumRestarts") or 0)))
    return tuple(rows)
