"""``@remote`` on a function: ``f.remote(...)`` submits a task and returns ObjectRefs.

The function is pickled once, on the first ``.remote`` call (so names it uses
may be defined in later cells, as in Ray), and named by the hash of its bytes;
each worker unpickles it once and caches it under that hash. Redefining the
function in a cell makes a new RemoteFunction, hence new bytes and a new hash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable
from typing import Any

from distkernel import runtime
from distkernel.protocol import FunctionPayload, TaskOptions
from distkernel.refs import ObjectRef
from distkernel.serialization import dumps

#: Options ``@remote(...)`` and ``.options(...)`` take for functions.
FUNCTION_OPTIONS = ("num_returns", "max_retries", "num_cpus", "num_gpus", "name", "memory",
                    "resources", "retry_exceptions", "scheduling_strategy", "runtime_env")


_being_pickled = threading.local()


def make_payload(function: Callable[..., Any], name: str, wrapper: Any = None) -> FunctionPayload:
    """Pickle ``function`` once. ``wrapper`` (its RemoteFunction or ActorClass) may appear
    inside it, as when a function submits itself: it is then pickled around the same
    function object, which the pickler has already met, instead of pickling it again."""
    pickling: set[int] = _being_pickled.__dict__.setdefault("ids", set())
    pickling.add(id(wrapper))
    try:
        data = dumps(function)
    finally:
        pickling.discard(id(wrapper))
    return FunctionPayload(hashlib.blake2b(data, digest_size=16).hexdigest(), data, name)


def being_pickled(wrapper: Any) -> bool:
    """Whether ``wrapper``'s own function is being pickled in this thread right now."""
    return id(wrapper) in _being_pickled.__dict__.get("ids", ())


def check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """Unknown names and bad values fail here, with the valid choices (habit 5)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        msg = (f"{what} got unknown option(s) {', '.join(unknown)}; "
               f"valid options: {', '.join(allowed)}")
        raise TypeError(msg)
    for key in ("num_returns", "max_retries"):
        value = options.get(key)
        if value is None:
            continue
        minimum = 1 if key == "num_returns" else -1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            msg = f"{what}: {key} must be an int >= {minimum}, got {value!r}"
            raise ValueError(msg)
    num_cpus = options.get("num_cpus")
    if num_cpus is not None and (not isinstance(num_cpus, (int, float)) or num_cpus < 0):
        msg = f"{what}: num_cpus must be a number >= 0, got {num_cpus!r}"
        raise ValueError(msg)
    if options.get("num_gpus"):
        msg = (f"{what}: num_gpus={options['num_gpus']!r} cannot be met by the local engine, "
               f"which has no GPU scheduling; drop the option or run on Ray (init(address=...))")
        raise ValueError(msg)


def task_options(options: dict[str, Any], default_name: str) -> TaskOptions:
    max_retries = options.get("max_retries", 3)
    return TaskOptions(num_returns=options.get("num_returns", 1),
                       max_retries=1_000_000 if max_retries == -1 else max_retries,
                       num_cpus=options.get("num_cpus", 1),
                       name=options.get("name") or default_name)


class RemoteFunction:
    """A function that runs as a task: call ``.remote(...)``, not the function itself."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any] | None = None,
                 payload: FunctionPayload | None = None) -> None:
        self._function = function
        self._options = dict(options or {})
        self._name: str = (getattr(function, "__qualname__", None)
                           or getattr(function, "__name__", None) or "task")
        check_options(self._options, FUNCTION_OPTIONS, f"@remote function {self._name}")
        self._task_options = task_options(self._options, self._name)
        self._payload = payload
        functools.update_wrapper(self, function)

    def _get_payload(self) -> FunctionPayload:
        if self._payload is None:
            self._payload = make_payload(self._function, self._name, self)
        return self._payload

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task; an ObjectRef, or a tuple of them when ``num_returns > 1``."""
        refs = runtime.client().submit(self._get_payload(), args, kwargs, self._task_options)
        return refs[0] if len(refs) == 1 else tuple(refs)

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with other options (``num_returns``, ``max_retries``, ``name``, ...)."""
        merged = {**self._options, **options}
        return RemoteFunction(self._function, merged, self._get_payload())

    def with_task_options(self, **fields: Any) -> RemoteFunction:
        """A copy with internal task fields set (``kind``, ``pin_worker``): for the front."""
        copy = RemoteFunction(self._function, self._options, self._get_payload())
        copy._task_options = dataclasses.replace(self._task_options, **fields)
        return copy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        msg = (f"remote function {self._name} cannot be called directly: use "
               f"{self._name}.remote(...) to run it as a task (then get() the result)")
        raise TypeError(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        if being_pickled(self):  # met inside its own function (it calls itself)
            return (RemoteFunction, (self._function, self._options))
        return (_rebuild, (self._get_payload(), self._options))

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _rebuild(payload: FunctionPayload, options: dict[str, Any]) -> RemoteFunction:
    """A RemoteFunction that arrived inside another task: unpickle its function lazily."""
    return RemoteFunction(_Lazy(payload), options, payload)


class _Lazy:
    """Stands in for the function until it is really called (only its payload travels)."""

    def __init__(self, payload: FunctionPayload) -> None:
        self.payload = payload
        self.__qualname__ = self.__name__ = payload.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from distkernel.serialization import deserialize

        return deserialize(self.payload.data)(*args, **kwargs)


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_returns=2, max_retries=3)`` on a function or a class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        msg = ("@remote takes keyword options only, e.g. @remote(num_returns=2); "
               f"got positional {args!r}")
        raise TypeError(msg)
    return lambda target: _make(target, options)


def _make(target: Any, options: dict[str, Any]) -> Any:
    if isinstance(target, type):
        from distkernel.actors import ActorClass

        return ActorClass(target, options)
    if isinstance(target, (RemoteFunction, ObjectRef)) or not callable(target):
        msg = f"@remote needs a function or a class, got {type(target).__name__}"
        raise TypeError(msg)
    return RemoteFunction(target, options)
