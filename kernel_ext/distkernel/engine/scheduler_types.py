"""What the scheduler tells the engine to do, and the state it keeps per worker, task, actor.

Instructions are frozen: the engine carries them out (local_core.execute).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Union

from distkernel.core.protocol import TaskSpec, message


class _NoResources(Mapping[str, float]):
    """The empty, immutable mapping of what actors' calls hold: shared by every task, so a
    submission allocates none (and hashable, so a dataclass may take it as a default)."""

    __slots__ = ()

    def __getitem__(self, name: str) -> float:
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0


NOTHING: Mapping[str, float] = _NoResources()

WorkerStateName = Literal["starting", "idle", "busy", "blocked", "stopping", "dead"]
ActorStateName = Literal["starting", "alive", "dead"]
#: Why a task fails without a result of its own (its results become the error).
FailReason = Literal["crashed", "cancelled", "actor_died", "infeasible"]


# --- instructions --------------------------------------------------------------------------

@message  # frozen for the type checker only: a frozen dataclass is slow to make, one per run
class Dispatch:
    worker_id: int
    seq: int
    spec: TaskSpec
    gpu_ids: tuple[int, ...] = ()  # GPU devices the run may use (CUDA_VISIBLE_DEVICES)


@dataclass(frozen=True, slots=True)
class FailTask:
    spec: TaskSpec
    reason: FailReason
    message: str


@dataclass(frozen=True, slots=True)
class StartWorker:
    extra: bool = False
    actor_id: str = ""


@dataclass(frozen=True, slots=True)
class StopWorker:
    worker_id: int


@dataclass(frozen=True, slots=True)
class InterruptWorker:
    worker_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class KillWorker:
    worker_id: int


@dataclass(frozen=True, slots=True)
class Revoke:
    """Tell a worker to drop runs it was sent but has not started."""

    worker_id: int
    seqs: tuple[int, ...]


Instruction = Union[Dispatch, FailTask, StartWorker, StopWorker, InterruptWorker, KillWorker,
                    Revoke]


# --- state ---------------------------------------------------------------------------------

@dataclass(slots=True)
class WorkerState:
    worker_id: int
    state: WorkerStateName = "starting"
    extra: bool = False
    assigned: deque[int] = field(default_factory=deque)  # seqs sent; the first one runs
    actor_id: str = ""  # set for a worker that hosts one actor

    @property
    def running(self) -> int | None:
        return self.assigned[0] if self.assigned else None


@dataclass(slots=True)
class TaskState:
    spec: TaskSpec
    waiting_on: set[str] = field(default_factory=set)
    retries_left: int = 0
    worker_id: int | None = None
    seq: int | None = None
    cancel_requested: bool = False
    caller: str = "driver"  # actor calls keep submission order per caller
    order: int = 0
    needs: Mapping[str, float] = NOTHING  # while it runs (resources)
    held: Mapping[str, float] = NOTHING  # what it holds right now
    gpu_ids: tuple[int, ...] = ()
    seqs: int = 1  # seqs a run of it takes: one per task of a batch (RunBatch)


@dataclass(slots=True)
class ActorState:
    """One actor: its creation task, its worker, and its callers' queues of calls."""

    create: TaskSpec
    class_name: str
    restarts_left: int
    task_retries: int
    worker_id: int | None = None
    queues: dict[str, deque[str]] = field(default_factory=dict)
    state: ActorStateName = "starting"
    created: bool = False  # the creation task was sent to the current worker
    releasing: bool = False  # no handle is left: stop once it has nothing to do
    death: str = ""
    restarts: int = 0
    needs: Mapping[str, float] = NOTHING  # held for its whole life
    holding: bool = False
    gpu_ids: tuple[int, ...] = ()
    in_flight: int = 16  # calls sent to its worker at most (more if it runs them at once)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())
