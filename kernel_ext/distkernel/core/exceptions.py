"""The public error tree (SPEC §5): one class per failure mode.

Every message is meant to be read in a notebook: it says what happened, why,
and what to do next.
"""

from __future__ import annotations

import pickle
import signal
from typing import Any


class DistkernelError(Exception):
    """Base class of every error distkernel raises on purpose."""


class SerializationError(DistkernelError, TypeError):
    """Raised when a value cannot be serialized for a put, a task argument or a result."""


class TaskError(DistkernelError):
    """Raised by ``get`` when the task or actor method raised.

    The instance ``get`` raises is also an instance of the original exception's
    class (see :func:`as_instance_of_cause`), so ``except ValueError`` works.
    """

    def __init__(self, message: str = "", *, cause: BaseException | None = None,
                 remote_traceback: str = "", task_name: str = "",
                 cause_bytes: bytes | None = None) -> None:
        # Not super(): in a class derived with the cause's class (see as_instance_of_cause)
        # the next __init__ would be the cause's, whose signature we do not know.
        Exception.__init__(self, message)
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.task_name = task_name
        # The cause as the worker pickled it: rebuilt from these bytes, which were
        # checked to load, rather than pickled again by the default reduction.
        self.cause_bytes = cause_bytes

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        cause: Any = self.cause_bytes if self.cause_bytes is not None else self.cause
        return (_rebuild_task_error,
                (self.args[0] if self.args else "", cause, self.remote_traceback,
                 self.task_name))


class WorkerCrashedError(DistkernelError):
    """Raised when a worker process died while running the task and retries are used up."""


class ActorDiedError(DistkernelError):
    """Raised for calls on an actor whose process died or was killed."""


class GetTimeoutError(DistkernelError, TimeoutError):
    """Raised when ``get(..., timeout=)`` expired; the task keeps running."""


class TaskCancelledError(DistkernelError):
    """Raised by ``get`` for a task that was cancelled (``cancel`` or a kernel interrupt)."""


class ObjectStoreFullError(DistkernelError, MemoryError):
    """Raised when the object store cannot hold a new object even after freeing what it may."""


class ObjectLostError(DistkernelError):
    """Raised by ``get`` for a ref whose object is gone (cluster restarted, or freed)."""


class ActorExit(SystemExit):
    """Raised by ``exit_actor()`` inside an actor method: the actor stops after this call
    (whose result is None), and later calls raise ActorDiedError."""


def actor_exit_reason(method: str) -> str:
    """Why an actor ended whose method ``method`` ("Class.method") called exit_actor()."""
    return f"the actor {method.split('.')[0]} ended itself with exit_actor() in {method}"


def actor_gone(call: str, reason: str) -> ActorDiedError:
    """The error of a call (``call``: "Class.method") that reached an actor no longer there,
    worded alike by every engine and wherever it is noticed."""
    return ActorDiedError(f"{call} cannot run: {reason}. Start a new actor (or give it "
                          f"max_restarts) to go on.")


class RemoteTraceback(Exception):
    """Carries the formatted remote traceback as the ``__cause__`` of a TaskError."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


_derived_classes: dict[type, type[TaskError]] = {}


def as_instance_of_cause(error: TaskError) -> TaskError:
    """Return ``error`` as an instance of both TaskError and the cause's class.

    A task that failed because a task it waited for failed has a TaskError as its
    cause: the innermost original error gives the class (issue 9: ``except
    ZeroDivisionError`` catches it however deep it was raised), while the message
    keeps every traceback on the way. Falls back to the plain TaskError when the
    cause's class cannot be subclassed or instantiated without its constructor.
    """
    cause = original_cause(error)
    if cause is None or not isinstance(cause, Exception):
        return error
    cause_cls = type(cause)
    derived: type[TaskError] | None = _derived_classes.get(cause_cls)
    if derived is None:
        try:
            derived = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls),  # type: ignore[assignment]
                           {"__module__": "distkernel.exceptions",
                            "__init__": TaskError.__init__,
                            "__str__": TaskError.__str__,
                            "__reduce__": TaskError.__reduce__})
        except TypeError:
            return error
        _derived_classes[cause_cls] = derived
    try:
        instance: TaskError = _new_instance(derived)
        TaskError.__init__(instance, str(error), cause=cause,
                           remote_traceback=error.remote_traceback, task_name=error.task_name,
                           cause_bytes=error.cause_bytes)
        # Attributes the original exception carries (errno, filename, ...) stay readable.
        for key, value in getattr(cause, "__dict__", {}).items():
            instance.__dict__.setdefault(key, value)
    except Exception:  # noqa: BLE001 - a cause class with an exotic __new__: keep the plain error
        return error
    instance.__cause__ = error.__cause__
    return instance


def original_cause(error: TaskError) -> BaseException | None:
    """The exception first raised: the cause of the innermost TaskError in a chain."""
    cause = error.cause
    while isinstance(cause, TaskError):
        cause = cause.cause
    return cause


def _new_instance(derived: type[TaskError]) -> TaskError:
    """An instance made without a constructor. A built-in base with a ``__new__`` of its own
    (MemoryError, behind ObjectStoreFullError) refuses to make a class whose layout comes
    from TaskError; Exception's ``__new__`` makes the same object."""
    try:
        return derived.__new__(derived)
    except TypeError:
        return Exception.__new__(derived)  # type: ignore[return-value]


def _rebuild_task_error(message: str, cause: BaseException | bytes | None,
                        remote_traceback: str, task_name: str) -> TaskError:
    cause_bytes = None
    original: BaseException | None = None
    if isinstance(cause, bytes):
        cause_bytes = cause
        try:
            original = pickle.loads(cause)
        except Exception:  # noqa: BLE001 - e.g. the class is not importable here
            original = None
    else:
        original = cause
    error = TaskError(message, cause=original, remote_traceback=remote_traceback,
                      task_name=task_name, cause_bytes=cause_bytes)
    if remote_traceback:
        error.__cause__ = RemoteTraceback(remote_traceback)
    return as_instance_of_cause(error)


def exception_text(exc: BaseException) -> str:
    """``"ValueError: message"`` for any exception, even one whose ``__str__`` raises.

    A task's error is described in the worker that caught it; a description that
    raised there would take the worker (or an actor) down with it.
    """
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - the user's __str__ is broken: say so instead
        message = "<its str() raised an error>"
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def returned_values(name: str, count: int, value: Any) -> tuple[Any, ...]:
    """The ``count`` values of a task declared with ``num_returns=count`` (not one) that
    returned ``value``; else the error it fails with, on either engine."""
    try:
        values = tuple(value)
    except TypeError:  # not a sequence at all
        values = ()
    if len(values) != count:
        msg = (f"{name} has num_returns={count} but returned {type(value).__name__} "
               f"{safe_repr(value)}; return a tuple of {count} values")
        raise ValueError(msg)
    return values


def safe_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, or a stand-in when ``__repr__`` raises."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object; its repr() raised an error>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_exit(exitcode: int | None) -> str:
    """Word a process exit code as a person would: a signal name, not a negative number."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


__all__ = ["ActorDiedError", "ActorExit", "DistkernelError", "GetTimeoutError", "ObjectLostError",
           "ObjectStoreFullError", "RemoteTraceback", "SerializationError", "TaskCancelledError",
           "TaskError", "WorkerCrashedError"]
