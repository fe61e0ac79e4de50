"""What every call in a worker shares: which call runs here, how a call ended, and what
the parts of a worker (the API client, concurrent actors) ask of the worker process.

The two protocols at the end are the worker (``loop.Worker``) as its parts see it:
they import this module, never ``loop``, so the worker's modules import one way.
Kept apart from ``concurrency`` so that a worker imports asyncio only when it hosts
an async actor (importing it costs a process ~12 ms at start-up).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, Protocol

from distkernel.core.protocol import RunTask, TaskSpec, Value, WorkerMessage
from distkernel.engine.control import ControlView
from distkernel.engine.worker.mailbox import Mailbox
from distkernel.store.reaper import Space

#: The task id of the call running in this thread or coroutine ("" outside one).
CURRENT_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("distkernel_call",
                                                                   default="")


@dataclass(slots=True)
class Outcome:
    """How a call ended: what TaskDone reports, and its value (refs inside must outlive it)."""

    results: tuple[Value, ...] = ()
    failed: bool = False
    cancelled: bool = False
    exited: bool = False  # exit_actor() ended the actor
    value: Any = None


class Sender(Protocol):
    def send(self, message: WorkerMessage) -> None: ...


class ClientHost(Protocol):
    """What the API client inside a task needs of its worker."""

    cluster_id: str
    actor_id: str  # "" in a task's worker
    current_task: str
    mailbox: Mailbox
    space: Space  # the cluster's files: every segment name we are sent is checked

    @property
    def link(self) -> Sender:
        """To the driver, in order, ref changes first."""

    def gpu_ids(self) -> list[str]: ...

    def load(self, value: Value) -> Any: ...


class CallRunner(Protocol):
    """What an actor running calls at once needs of its worker: each step of one call."""

    control: ControlView

    def call(self, message: RunTask) -> Outcome: ...

    def callable_for(self, spec: TaskSpec, payload: bytes | None) -> Any: ...

    def arguments(self, message: RunTask) -> tuple[list[Any], dict[str, Any]]: ...

    def outcome_of(self, spec: TaskSpec, value: Any) -> Outcome: ...

    def failure(self, spec: TaskSpec, exc: BaseException) -> Outcome: ...

    def finish(self, message: RunTask, started: float, outcome: Outcome) -> None: ...
