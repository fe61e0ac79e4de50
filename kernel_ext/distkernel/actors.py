"""``@remote`` on a class: actors, each in a worker process of its own.

``Cup.remote(3)`` returns an ``ActorHandle`` at once; the constructor runs in the
actor's process before any method call. ``handle.la.remote(x)`` returns an
ObjectRef; one actor runs its calls one at a time, in the order each caller
submitted them. A handle holds a counted reference to the actor (its id is an
object id), so passing handles to tasks keeps the actor alive, and when the
last handle anywhere is gone the actor stops after its queued calls.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from distkernel import runtime
from distkernel.protocol import ActorOptions, FunctionPayload, TaskOptions
from distkernel.refs import ObjectRef
from distkernel.remote_function import check_options, make_payload

#: Options ``@remote(...)`` and ``.options(...)`` take for classes.
ACTOR_OPTIONS = ("name", "max_restarts", "max_task_retries", "num_cpus", "num_gpus", "memory",
                 "resources", "max_concurrency", "lifetime", "namespace", "get_if_exists",
                 "runtime_env", "scheduling_strategy")

_NUM_RETURNS = "__distkernel_num_returns__"


def method(*, num_returns: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@method(num_returns=2)`` on an actor method, as Ray's ``ray.method``."""
    check_options({"num_returns": num_returns}, ("num_returns",), "@method")

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(function, _NUM_RETURNS, num_returns)
        return function

    return mark


def _public_methods(cls: type) -> tuple[tuple[str, int], ...]:
    found = []
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") and name != "__call__":
            continue
        found.append((name, getattr(member, _NUM_RETURNS, 1)))
    return tuple(found)


def _check_count(value: Any, key: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        msg = f"{what}: {key} must be an int >= 0 (or -1 for unlimited), got {value!r}"
        raise ValueError(msg)
    return 1_000_000 if value == -1 else value


class ActorClass:
    """A class whose instances live in worker processes: call ``.remote(...)`` to start one."""

    def __init__(self, cls: type, options: dict[str, Any] | None = None,
                 payload: FunctionPayload | None = None) -> None:
        self._cls = cls
        self._options = dict(options or {})
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        what = f"@remote class {cls.__name__}"
        check_options(self._options, ACTOR_OPTIONS, what)
        self._max_restarts = _check_count(self._options.get("max_restarts", 0), "max_restarts",
                                          what)
        self._max_task_retries = _check_count(self._options.get("max_task_retries", 0),
                                              "max_task_retries", what)
        self._payload = payload

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Start the actor; returns its handle at once (constructor errors show on first get)."""
        if self._payload is None:
            self._payload = make_payload(self._cls, self._cls.__qualname__)
        lifetime = self._options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            msg = f"lifetime must be None, 'detached' or 'non_detached', got {lifetime!r}"
            raise ValueError(msg)
        options = ActorOptions(self._cls.__name__, _public_methods(self._cls),
                               self._max_restarts, self._max_task_retries,
                               self._options.get("name") or "", lifetime == "detached")
        ref = runtime.client().create_actor(self._payload, args, kwargs, options)
        return ActorHandle(ref, options.class_name, options.methods)

    def options(self, **options: Any) -> ActorClass:
        """A copy with other options (``name``, ``max_restarts``, ``max_task_retries``, ...)."""
        return ActorClass(self._cls, {**self._options, **options}, self._payload)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._cls.__name__
        msg = (f"actor class {name} cannot be instantiated directly: use {name}.remote(...) "
               f"to start an actor and get its handle")
        raise TypeError(msg)

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__qualname__}>"


class ActorHandle:
    """A handle to one actor: ``handle.method.remote(...)``; pass it to tasks and actors."""

    def __init__(self, ref: ObjectRef, class_name: str,
                 methods: tuple[tuple[str, int], ...]) -> None:
        self._ref = ref
        self._class_name = class_name
        self._methods = dict(methods)

    @property
    def actor_id(self) -> str:
        return self._ref.hex()

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if methods is None or name.startswith("__"):
            raise AttributeError(name)
        if name not in methods:
            listed = ", ".join(sorted(m for m in methods if not m.startswith("_"))) or "none"
            msg = (f"actor {self._class_name} has no method {name!r}; its methods: {listed}")
            raise AttributeError(msg)
        return ActorMethod(self, name, methods[name])

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._ref, self._class_name, tuple(self._methods.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._ref == self._ref

    def __hash__(self) -> int:
        return hash(self._ref)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self.actor_id})"


class ActorMethod:
    """``handle.method``: call ``.remote(...)`` on it."""

    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Queue the call on the actor; an ObjectRef (a tuple when ``num_returns > 1``)."""
        handle = self._handle
        payload, options = _call_descriptors(handle._class_name, self._name, self._num_returns)
        refs = runtime.client().submit(payload, args, kwargs, options,
                                       actor_id=handle.actor_id, method=self._name)
        return refs[0] if len(refs) == 1 else tuple(refs)

    def options(self, *, num_returns: int | None = None, **unused: Any) -> ActorMethod:
        if unused:
            msg = (f"{self._handle._class_name}.{self._name}.options() takes num_returns only, "
                   f"got {', '.join(sorted(unused))}")
            raise TypeError(msg)
        count = self._num_returns if num_returns is None else num_returns
        check_options({"num_returns": count}, ("num_returns",), f"{self._name}.options()")
        return ActorMethod(self._handle, self._name, count)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        label = f"{self._handle._class_name}.{self._name}"
        msg = (f"actor method {label} cannot be called directly: use {label}.remote(...) "
               f"(then get() the result)")
        raise TypeError(msg)


@functools.lru_cache(maxsize=4096)
def _call_descriptors(class_name: str, method: str,
                      num_returns: int) -> tuple[FunctionPayload, TaskOptions]:
    """What every call of one method carries: made once, not per call (a hot path)."""
    label = f"{class_name}.{method}"
    return (FunctionPayload("", b"", label),
            TaskOptions(num_returns=num_returns, max_retries=0, name=label))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now; its pending and later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        msg = (f"kill() takes an actor handle (what Class.remote() returns), got "
               f"{type(actor).__name__}")
        raise TypeError(msg)
    runtime.client().kill_actor(actor.actor_id, no_restart)


def get_actor(name: str) -> ActorHandle:
    """The handle of the actor started with ``.options(name=name)``."""
    found = runtime.backend().named_actor(name)
    if found is None:
        msg = (f"no actor named {name!r} is alive; start one with "
               f"Class.options(name={name!r}).remote()")
        raise ValueError(msg)
    ref, options = found
    return ActorHandle(ref, options.class_name, options.methods)
