"""A picture of the cluster at one moment: what ``status()``, ``%dist status`` and the side
panel show.

An engine builds it under its own lock and hands it out frozen, so a reader in
another thread (the panel's pusher, a magic) never sees the engine's live
tables, and two engines (local, Ray) look the same from above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names for type checkers only: importing the scheduler's types costs ms
    from distkernel.engine.scheduler_types import ActorStateName, WorkerStateName


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker process. CPU and RSS are None when the process cannot be read."""

    worker_id: int
    pid: int | None
    state: WorkerStateName
    current_task: str | None  # the running task's name
    current_task_id: str | None
    task_started: float | None  # when the current task began (epoch seconds)
    actor_id: str | None  # the actor it hosts
    extra: bool  # started beyond the pool's size, for a task blocked in get()
    cpu_percent: float | None
    rss: int | None  # bytes
    ready_at: float | None = None  # when it was ready for tasks (None: still starting)


@dataclass(frozen=True, slots=True)
class ActorSnapshot:
    actor_id: str
    class_name: str
    name: str  # "" for an unnamed actor
    state: ActorStateName
    worker_id: int | None
    pid: int | None
    queued_calls: int
    restarts: int


@dataclass(frozen=True, slots=True)
class ObjectSnapshot:
    """One of the largest objects: who made it ("put" or a task's name), from which cell."""

    object_id: str
    nbytes: int
    made_by: str
    cell: str | None  # the notebook cell's tag, None outside a notebook


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The object store; spilled objects live on disk until read again."""

    capacity: int
    used_bytes: int
    num_objects: int
    spilled_bytes: int
    spilled_objects: int
    largest: tuple[ObjectSnapshot, ...] = ()  # the largest objects, largest first


@dataclass(frozen=True, slots=True)
class Counters:
    """Tasks (actor calls and creations included) since the cluster started."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    workers_started: int = 0
    workers_died: int = 0  # ended without being asked to (crashes, kills)


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One machine of a multi-node cluster (Ray): ``index`` is its number here, the
    ``worker_id`` of the tasks that ran on it; resources as ``(name, amount)`` pairs."""

    index: int
    node_id: str
    address: str
    alive: bool
    resources_total: tuple[tuple[str, float], ...]
    resources_available: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything one look at the cluster shows; ``taken_at`` and ``started_at`` are epoch
    seconds."""

    backend: str
    cluster_id: str
    started_at: float
    taken_at: float
    num_workers: int  # the pool's size (extra and actor workers come on top)
    workers: tuple[WorkerSnapshot, ...]
    actors: tuple[ActorSnapshot, ...]
    store: StoreSnapshot
    queued: int  # tasks waiting for a worker or for their arguments
    running: int
    resources_total: tuple[tuple[str, float], ...]
    resources_available: tuple[tuple[str, float], ...]
    counters: Counters
    nodes: tuple[NodeSnapshot, ...] = ()  # a multi-node engine's machines; () locally

    def as_status(self) -> dict[str, Any]:
        """The ``status()`` dict (SPEC §2): plain values a notebook can print or serialize."""
        store = asdict(self.store)
        store["object_count"] = self.store.num_objects  # the spec's name, next to ours
        workers = [{"id": row.pop("worker_id"), **row}
                   for row in (asdict(worker) for worker in self.workers)]
        return {"backend": self.backend, "cluster_id": self.cluster_id,
                "num_workers": self.num_workers, "workers": workers,
                "actors": [asdict(actor) for actor in self.actors], "object_store": store,
                "queued_tasks": self.queued, "running_tasks": self.running,
                "resources": {"total": dict(self.resources_total),
                              "available": dict(self.resources_available)},
                "counters": asdict(self.counters),
                "nodes": [{**asdict(node), "resources_total": dict(node.resources_total),
                           "resources_available": dict(node.resources_available)}
                          for node in self.nodes]}
