"""Ray's exceptions as ours (SPEC §5): the same error classes on both engines."""

from __future__ import annotations

import re
from typing import Any

from ray import cloudpickle

from distkernel.backends.ray.runner import CarriedError
from distkernel.core.exceptions import (
    ActorDiedError,
    DistkernelError,
    GetTimeoutError,
    ObjectLostError,
    RemoteTraceback,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
    as_instance_of_cause,
    exception_text,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CALL = re.compile(r"ray::([\w.<>]+)\(")
_WHERE = re.compile(r"\(pid=(\d+), ip=([\w.:-]+)\)")


def translated(error: BaseException) -> BaseException:
    """Our exception for one Ray raised; anything else unchanged."""
    from ray import exceptions as ray_errors

    if isinstance(error, ray_errors.GetTimeoutError):
        return GetTimeoutError(f"{error} The tasks keep running: call get() again later, "
                               f"raise the timeout, or cancel() them.")
    if isinstance(error, ray_errors.TaskCancelledError):
        return TaskCancelledError(str(error))
    if isinstance(error, ray_errors.RayTaskError):
        return _task_error(error)
    if isinstance(error, ray_errors.ActorDiedError | ray_errors.ActorUnavailableError):
        return ActorDiedError(str(error))
    if isinstance(error, ray_errors.WorkerCrashedError | ray_errors.NodeDiedError):
        return WorkerCrashedError(str(error))
    if isinstance(error, ray_errors.ObjectLostError):
        return ObjectLostError(str(error))
    if isinstance(error, ray_errors.RayError):
        return DistkernelError(f"Ray: {error}")
    return error


def _task_error(error: Any) -> BaseException:
    """A task raised: TaskError that is also an instance of the original exception's class,
    with the remote traceback, as on the local engine."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, CarriedError):
        try:
            cause = cloudpickle.loads(cause.data)  # the task's own exception
        except Exception:  # noqa: BLE001 - cannot be rebuilt here: the carrier stands
            pass
    if isinstance(cause, ActorDiedError):  # a call to an actor that ended itself (runner)
        return cause
    # Ray's text: "ray::f() (pid=…, ip=…)" then the remote traceback, with colour codes.
    remote = _ANSI.sub("", str(getattr(error, "traceback_str", None) or error))
    named = _CALL.search(remote)
    name = str(getattr(error, "function_name", None) or (named.group(1) if named else "a task"))
    what = exception_text(cause) if isinstance(cause, BaseException) else str(error)
    where = _WHERE.search(remote)
    # As the local engine words it: what failed, then the traceback and where it ran.
    message = (f"{name} failed with {what.splitlines()[0] if what else 'an error'}\n\n"
               f"Remote traceback ({f'pid {where[1]}, ip {where[2]}' if where else 'Ray'}):"
               f"\n{remote}")
    ours = TaskError(message, cause=cause if isinstance(cause, Exception) else None,
                     remote_traceback=remote, task_name=name)
    if remote:
        ours.__cause__ = RemoteTraceback(remote)
    return as_instance_of_cause(ours)
