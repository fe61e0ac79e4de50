"""What runs inside a Ray worker around each of our tasks: the call, its output, its times.

A task returns its results and one more value, its ``Report``: when it started and
ended, on which node and process, and what it printed. The driver files that in the
task's record and writes the output under the cell that submitted it, however late it
comes (Ray would print it under whichever cell runs then). A task that raises carries
its report on the exception instead.

Ray's workers import this module (so distkernel must be installed where they run, as
any package a task uses); it needs only the standard library and Ray.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import io
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

#: The attribute a raised exception carries its task's report in.
REPORT_ATTRIBUTE = "_distkernel_report"
#: The attribute of a ``traced_class`` naming its traced methods.
TRACED = "_distkernel_traced"
#: The method of a ``traced_class`` that says how the actor was made (its options).
DESCRIBE = "_distkernel_describe"
#: The keyword a task carries the driver's serializer registry in (its pickled form),
#: once there is one: the worker registers it with Ray before the call, for what it sends.
REGISTRY_KEYWORD = "_distkernel_registry"
#: The method of a ``traced_class`` an actor is given the registry by (Ray would not take
#: an extra keyword on its methods), before the calls that follow it.
USE_REGISTRY = "_distkernel_use_registry"


class Report(NamedTuple):
    started: float  # epoch seconds, on the worker's clock
    finished: float
    node_id: str  # Ray's node id (hex)
    pid: int
    stdout: str
    stderr: str


class _TaskStreams(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a Ray worker while our tasks run: what a running
    call writes is kept for its report; anything else goes on as before. The buffers
    are per call (a context variable), since an actor may run several calls at once, in
    threads or as coroutines."""

    def __init__(self, original: Any, stream: str) -> None:
        self._original = original
        self._stream = stream

    def write(self, text: str) -> int:
        buffers = _buffers.get()
        if buffers is None:
            self._original.write(text)  # Ray's own streams return None here
        else:
            buffers[self._stream].append(text)
        return len(text)

    def flush(self) -> None:
        if _buffers.get() is None:
            self._original.flush()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._original, "encoding", "utf-8"))

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._original.fileno())


_buffers: contextvars.ContextVar[dict[str, list[str]] | None] = contextvars.ContextVar(
    "distkernel_task_output", default=None)
_install_lock = threading.Lock()


def _capture_streams() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _TaskStreams):
            sys.stdout = _TaskStreams(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _TaskStreams):
            sys.stderr = _TaskStreams(sys.stderr, "stderr")


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - outside Ray (a test calling the wrapper directly)
        return ""


def traced(function: Callable[..., Any], num_returns: int,
           setup: Callable[[], object] | None = None) -> Callable[..., Any]:
    """``function`` returning its results and then its ``Report`` (``num_returns + 1``
    values in all), or raising with the report attached. A coroutine function stays one
    (an async actor's method). ``setup`` runs in the worker before each call (it makes
    our API usable there).

    The wrapper refers to module functions only, which Ray's pickler sends by name: the
    state they keep (a lock, a context variable) stays in the worker's own module.
    """
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if setup is not None:
                setup()
            call = _begin(kwargs)
            try:
                value = await function(*args, **kwargs)
            except BaseException as exc:
                _failed(exc, call)
                raise
            finally:
                _end(call)
            return _returned(value, call, num_returns, function)

        return _taking_registry(run_async, function)

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        if setup is not None:
            setup()
        call = _begin(kwargs)
        try:
            value = function(*args, **kwargs)
        except BaseException as exc:
            _failed(exc, call)
            raise
        finally:
            _end(call)
        return _returned(value, call, num_returns, function)

    return _taking_registry(run, function)


def _taking_registry(wrapper: Callable[..., Any], function: Callable[..., Any]
                     ) -> Callable[..., Any]:
    """``wrapper`` with ``function``'s signature plus the registry keyword: Ray checks a
    call's arguments against the signature it reads."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to check against: nothing to add
        return wrapper
    params = list(signature.parameters.values())
    extra = inspect.Parameter(REGISTRY_KEYWORD, inspect.Parameter.KEYWORD_ONLY, default=None)
    at = len(params) - 1 if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD \
        else len(params)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], extra, *params[at:]])
    return wrapper


class _Call(NamedTuple):
    buffers: dict[str, list[str]]
    token: contextvars.Token[Any]
    started: float


def _begin(kwargs: dict[str, Any]) -> _Call:
    registry = kwargs.pop(REGISTRY_KEYWORD, None)
    if registry is not None:
        _use_registry(registry)
    _capture_streams()
    buffers: dict[str, list[str]] = {"stdout": [], "stderr": []}
    return _Call(buffers, _buffers.set(buffers), time.time())


_registered: dict[str, Any] = {"data": b"", "classes": []}


def _use_registry(data: bytes) -> None:
    """Make Ray's serialization in this worker follow the driver's registry (the pickled
    ``(class, serializer, deserializer)`` list), if it changed since the last call."""
    if data == _registered["data"]:
        return
    import pickle

    from ray import util

    entries = pickle.loads(data)
    for cls in _registered["classes"]:
        util.deregister_serializer(cls)
    for cls, serializer, deserializer in ((c, s, d) for c, (s, d) in entries):
        util.register_serializer(cls, serializer=serializer, deserializer=deserializer)
    _registered.update(data=data, classes=[cls for cls, _ in entries])


def _end(call: _Call) -> None:
    _buffers.reset(call.token)


def _failed(exc: BaseException, call: _Call) -> None:
    try:
        setattr(exc, REPORT_ATTRIBUTE, _report(call))
    except Exception:  # noqa: BLE001 - an exception that takes no attributes
        pass


def _returned(value: Any, call: _Call, num_returns: int, function: Any) -> Any:
    report = _report(call)
    if num_returns == 1:
        return value, report
    values = tuple(value)
    if len(values) != num_returns:
        name = getattr(function, "__qualname__", "the task")
        msg = f"{name} has num_returns={num_returns} but returned {len(values)} values"
        raise ValueError(msg)
    return (*values, report)


def traced_class(cls: type, methods: tuple[tuple[str, int], ...], options: Any,
                 setup: Callable[[], object] | None = None) -> type:
    """An actor class whose listed methods are ``traced`` (each with its num_returns); its
    ``TRACED`` attribute names them (static and class methods are left as they are). Its
    ``DESCRIBE`` method returns ``options`` and those names: what ``get_actor`` needs."""
    namespace: dict[str, Any] = {
        name: traced(getattr(cls, name), num_returns, setup) for name, num_returns in methods
        if inspect.isfunction(inspect.getattr_static(cls, name, None))}  # plain methods only
    namespace[TRACED] = frozenset(namespace)
    if setup is not None:
        original_init = getattr(cls, "__init__")  # noqa: B009 - the class, not an instance

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            setup()
            original_init(self, *args, **kwargs)

        if inspect.isfunction(original_init):  # not object's: Ray reads a Python signature
            functools.update_wrapper(__init__, original_init)
        namespace["__init__"] = __init__
    namespace[DESCRIBE] = functools.partialmethod(_describe, options)
    namespace[USE_REGISTRY] = _accept_registry
    namespace["__module__"] = cls.__module__
    namespace["__qualname__"] = cls.__qualname__
    return type(cls.__name__, (cls,), namespace)


def _accept_registry(self: Any, data: bytes) -> None:
    _use_registry(data)


def _describe(self: Any, options: Any) -> tuple[Any, frozenset[str]]:
    return options, getattr(type(self), TRACED)


def _report(call: _Call) -> Report:
    return Report(call.started, time.time(), _node_id(), os.getpid(),
                  "".join(call.buffers["stdout"]), "".join(call.buffers["stderr"]))
