"""distkernel: parallel notebook code on a local worker pool, with a Ray-compatible API.

    import distkernel as dk
    dk.init()
    @dk.remote
    def square(x):
        return x * x
    dk.get([square.remote(i) for i in range(4)])   # [0, 1, 4, 9]
"""

from distkernel import actor, exceptions, util
from distkernel.api.actors import ActorClass, ActorHandle, exit_actor, get_actor, kill, method
from distkernel.api.decorator import remote
from distkernel.api.operations import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    nodes,
    put,
    status,
    timeline,
    wait,
)
from distkernel.api.remote_function import RemoteFunction
from distkernel.api.runtime import ClusterInfo, init, is_initialized, shutdown
from distkernel.api.util import (
    RuntimeContext,
    deregister_serializer,
    get_gpu_ids,
    get_runtime_context,
    register_serializer,
)
from distkernel.core.exceptions import (
    ActorDiedError,
    DistkernelError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)
from distkernel.core.refs import ObjectRef
from distkernel.core.timings import TaskRecord
from distkernel.store.serializability import inspect_serializability

__version__ = "0.1.0"


def load_ipython_extension(shell: object) -> None:
    """``%load_ext distkernel`` (IPython imports the front only when asked)."""
    from distkernel.front import extension

    extension.load(shell)


def unload_ipython_extension(shell: object) -> None:
    from distkernel.front import extension

    extension.unload(shell)

__all__ = [
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "ClusterInfo",
    "DistkernelError",
    "GetTimeoutError",
    "ObjectLostError",
    "ObjectRef",
    "ObjectStoreFullError",
    "RemoteFunction",
    "RuntimeContext",
    "SerializationError",
    "TaskCancelledError",
    "TaskError",
    "TaskRecord",
    "WorkerCrashedError",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "deregister_serializer",
    "exceptions",
    "exit_actor",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "inspect_serializability",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "register_serializer",
    "remote",
    "shutdown",
    "status",
    "timeline",
    "util",
    "wait",
]
