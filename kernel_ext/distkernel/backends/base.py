"""The engine interface: all the public API and the notebook front ask of an engine.

::

    api/ (put, get, f.remote ...) ──▶ Client ◀── in a task: engine/worker WorkerClient
                                         ▲
    api/runtime (init, shutdown) ──▶ Engine ◀── backends/local LocalEngine (Ray's next)
    front/ (magics, timings, panel) ─────┘  reads snapshot() and timeline(), routes output

``Client`` (core/context.py) is what a call needs wherever it runs: in the driver that is the
engine, inside a task the worker's link to the driver. ``Engine`` adds what only
the driver does: manage the pool, describe the cluster, and tie tasks to the
notebook cell that submitted them. ``runtime`` holds one ``Engine``; nothing
above this layer sees an engine's lock, scheduler or tables.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # for type checkers only: ``import distkernel`` stays quick
    from distkernel.backends.snapshot import ClusterSnapshot
    from distkernel.core.config import ClusterSettings
    from distkernel.core.protocol import ActorOptions, FunctionPayload, TaskOptions
    from distkernel.core.refs import ObjectRef
    from distkernel.core.timings import TaskRecord

#: Where a task's printed output goes: (worker id, task id, "stdout" | "stderr", text).
OutputHandler = Callable[[int, str, str, str], None]
#: Names the notebook cell running now (its tag), or None outside a cell.
CellSource = Callable[[], "str | None"]


class Engine(abc.ABC):
    """A running cluster, as the driver sees it. One instance per ``init()``.

    Every method may be called from any thread; an engine guards its own state.
    Ctrl-C in the driver never leaves it half changed (see core/interrupts.py).
    """

    #: The engine's name in ``status()`` and ``ClusterInfo`` ("local", "ray").
    name: ClassVar[str]
    cluster_id: str
    settings: ClusterSettings
    #: True once ``shutdown`` began: callers start a new cluster instead.
    closing: bool
    #: Where the object store lives, for ``ClusterInfo`` ("" if it has no address).
    store_address: str

    def job_id(self) -> str:
        """The job's id in the runtime context (the same in the driver and in tasks)."""
        return self.cluster_id

    def node_id(self) -> str:
        """The id of the node this process runs on, in the runtime context."""
        return self.cluster_id

    # -- objects, tasks, actors (the Client part) ----------------------------------------

    @abc.abstractmethod
    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` now; the ref is counted (the object lives while refs do)."""

    @abc.abstractmethod
    def get(self, object_refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """The values, in order; raises the first task error among them as soon as it is
        in, GetTimeoutError at the timeout."""

    @abc.abstractmethod
    def wait(self, object_refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """``(ready, not_ready)`` once ``num_returns`` are ready or at the timeout."""

    @abc.abstractmethod
    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, actor_id: str = "",
               method: str = "") -> list[ObjectRef]:
        """Run a task (or, with ``actor_id``, call that actor's ``method``); refs to its
        results."""

    @abc.abstractmethod
    def create_actor(self, cls: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ObjectRef:
        """Start an actor; the ref stands for it (handles count as refs)."""

    @abc.abstractmethod
    def named_actor(self, name: str,
                    namespace: str | None = None) -> tuple[ObjectRef, ActorOptions] | None:
        """The live actor called ``name`` (in ``namespace``, default the cluster's)."""

    @abc.abstractmethod
    def kill_actor(self, actor_id: str, no_restart: bool) -> None:
        """Stop the actor now; with ``no_restart`` it stays dead and its name is free."""

    @abc.abstractmethod
    def cancel(self, ref: ObjectRef, force: bool) -> None:
        """Cancel the task making ``ref``: dropped if queued, interrupted if running
        (``force``: its worker is killed and replaced)."""

    @abc.abstractmethod
    def cancel_task(self, task_id: str, *, force: bool = False) -> bool:
        """Cancel one task by its id (the side panel's cancel); False if it had ended."""

    # -- the cluster ------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """The pool's size, as last set by ``init`` or ``resize``."""

    @abc.abstractmethod
    def resize(self, num_workers: int) -> None:
        """Grow or shrink the pool (busy workers finish their task first)."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop every worker and free every object; safe to call twice. (A restart is a
        shutdown and a new engine with the same settings: ``runtime.restart``.)"""

    @abc.abstractmethod
    def snapshot(self) -> ClusterSnapshot:
        """The cluster now: workers, actors, the store, tasks, counters."""

    @abc.abstractmethod
    def timeline(self, last: int | None = None, *, cell: str | None = None) -> list[TaskRecord]:
        """Records of the latest tasks, oldest first: all kept ones or the ``last`` N; with
        ``cell``, those submitted by that cell (and their child tasks)."""

    # -- the notebook cell behind each task ----------------------------------------------------

    @abc.abstractmethod
    def route_output(self, current_cell: CellSource | None, write: OutputHandler) -> None:
        """Tag each new task with ``current_cell()`` (children inherit their parent's
        tag) and send every task's printed output to ``write``."""

    @abc.abstractmethod
    def cell_of_task(self, task_id: str) -> str | None:
        """The tag of the cell that submitted the task (None if untagged or forgotten)."""

    @abc.abstractmethod
    def cancel_cell(self, cell: str, *, force: bool = False) -> list[str]:
        """Cancel the unfinished tasks of one cell (an interrupted cell); their ids."""


def print_output(worker_id: int, task_id: str, stream: str, text: str) -> None:
    """Task output outside a notebook: the driver's stdout / stderr, each line prefixed
    with the worker id (as Ray prints it)."""
    target = sys.stderr if stream == "stderr" else sys.stdout
    prefix = f"(worker {worker_id}) "
    lines = text.splitlines(keepends=True)
    target.write("".join(prefix + line for line in lines))
    if not text.endswith("\n"):
        target.write("\n")
    target.flush()
