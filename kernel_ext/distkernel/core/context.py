"""Which client this process talks to: the driver's engine, or (inside a worker) the driver.

``api`` asks here first, so ``get`` / ``put`` / ``.remote`` work the same in a
notebook cell and inside a task or actor method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from distkernel.core.protocol import ActorOptions, FunctionPayload, TaskOptions
from distkernel.core.refs import ObjectRef


class Client(Protocol):
    """What the public API needs from an engine, in the driver or in a worker."""

    cluster_id: str

    def job_id(self) -> str: ...

    def node_id(self) -> str: ...

    def put(self, value: Any) -> ObjectRef: ...

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]: ...

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]: ...

    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, actor_id: str = "",
               method: str = "") -> list[ObjectRef]: ...

    def create_actor(self, cls: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ObjectRef: ...

    def kill_actor(self, actor_id: str, no_restart: bool) -> None: ...

    def named_actor(self, name: str,
                    namespace: str | None = None) -> tuple[ObjectRef, ActorOptions] | None: ...

    def cancel(self, ref: ObjectRef, force: bool) -> None: ...


class WorkerContext(Client, Protocol):
    """The client inside a worker also knows where it runs."""

    @property
    def actor_id(self) -> str: ...

    def task_id(self) -> str: ...

    def gpu_ids(self) -> list[str]: ...


_worker_client: WorkerContext | None = None


def set_worker(client: WorkerContext) -> None:
    """Called once in a worker process: every API call goes to the driver through it."""
    global _worker_client
    _worker_client = client


def worker_client() -> WorkerContext | None:
    return _worker_client
