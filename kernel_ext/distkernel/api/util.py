"""Ray-compatible names under ``distkernel.util`` (``ray.util.register_serializer`` ...),
and the small ones Ray has at the top level: ``get_gpu_ids``, ``get_runtime_context``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from distkernel.api import runtime
from distkernel.core import context
from distkernel.store.pickler import registry
from distkernel.store.serializability import FailureTuple, inspect_serializability


def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Serialize every ``cls`` instance as ``deserializer(serializer(obj))``.

    Used for puts, task arguments and results alike; the deserializer travels
    with the data, so workers need no registration of their own.
    """
    registry.register(cls, serializer, deserializer)


def deregister_serializer(cls: type) -> None:
    """Back to the default for ``cls``; doing it for an unregistered class does nothing."""
    registry.deregister(cls)


def get_node_ip_address() -> str:
    """The address of the one node: this machine."""
    return runtime.NODE_IP_ADDRESS


def get_gpu_ids() -> list[int] | list[str]:
    """The GPUs the running task or actor was given (``num_gpus``), as Ray lists them.

    Read from ``CUDA_VISIBLE_DEVICES``, which the engine sets for each run given
    GPUs: ints, or the device names when they are not numbers (UUIDs). The driver
    is given none, so it gets ``[]``, as in Ray.
    """
    client = context.worker_client()
    if client is None:
        return []
    names = client.gpu_ids()
    if all(n.isdigit() for n in names):
        return [int(n) for n in names]
    return names


class RuntimeContext:
    """Where the caller runs: Ray's ``get_runtime_context()``.

    One cluster is one job on one node, so the job id and the node id are both the
    cluster's id. ``get_task_id()`` is None in the driver; ``get_actor_id()`` is None
    outside an actor.
    """

    def get_job_id(self) -> str:
        return runtime.client().job_id()

    def get_node_id(self) -> str:
        return runtime.client().node_id()

    def get_task_id(self) -> str | None:
        return runtime.current_task_id()

    def get_actor_id(self) -> str | None:
        return runtime.current_actor_id()

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The GPUs given to the running task or actor, as strings (Ray's form)."""
        return {"GPU": [str(gpu) for gpu in get_gpu_ids()]}

    @property
    def namespace(self) -> str:
        """The namespace named actors are created and looked up in when a call names none."""
        settings = runtime.settings()
        if settings is not None:
            return settings.namespace
        if context.worker_client() is not None:
            return os.environ.get(runtime.NAMESPACE_VARIABLE, "")
        return runtime.engine().settings.namespace


def get_runtime_context() -> RuntimeContext:
    """Ids of the job, node, task and actor the caller runs in, and its namespace."""
    return RuntimeContext()


__all__ = ["FailureTuple", "RuntimeContext", "deregister_serializer", "get_gpu_ids",
           "get_node_ip_address", "get_runtime_context", "inspect_serializability",
           "register_serializer"]
