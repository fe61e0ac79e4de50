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
import inspect
import threading
from collections.abc import Callable
from typing import Any

from distkernel.api import runtime
from distkernel.api.options import FUNCTION_OPTIONS, check_options, task_options
from distkernel.core.protocol import FunctionPayload
from distkernel.store.serialization import dumps

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


# -- arguments ----------------------------------------------------------------------------

def _accept_any(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The check of a callable that takes anything (``*args, **kwargs``) or has no signature."""


class _Default:
    """Stands for a parameter's default where only a signature's shape travelled."""

    def __repr__(self) -> str:
        return "..."


_DEFAULT = _Default()
_KINDS = {int(kind): kind for kind in (
    inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD)}


class ArgumentCheck:
    """Refuses a call whose arguments do not fit the function, before it is sent (as Ray
    does), instead of failing later in a worker.

    Made once per function; a call passing positional arguments only to a function
    with plain parameters costs one length comparison, others a ``Signature.bind``.
    It travels (inside a RemoteFunction or an ActorHandle sent to a task) as the
    signature's shape only: names, kinds and which have defaults, never the defaults.
    """

    __slots__ = ("_high", "_keywords", "_label", "_low", "_plain", "_required", "_shape",
                 "_signature")

    def __init__(self, signature: inspect.Signature, label: str) -> None:
        params = list(signature.parameters.values())
        plain_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._signature = signature
        self._label = label
        self._plain = all(p.kind in plain_kinds for p in params)
        self._low = sum(1 for p in params if p.default is inspect.Parameter.empty)
        self._high = len(params)
        # Plain parameters by position: the names a keyword may give after n positionals.
        self._keywords = tuple(frozenset(p.name for p in params[n:]
                                         if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
                               for n in range(len(params) + 1))
        self._required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        self._shape = tuple((p.name, int(p.kind), p.default is not inspect.Parameter.empty)
                            for p in params)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        count = len(args)
        if self._plain and count <= self._high:
            if not kwargs:
                if count >= self._low:
                    return
            elif kwargs.keys() <= self._keywords[count] and \
                    all(name in kwargs for name in self._required[count:]):
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            msg = (f"{self._label}.remote(...) got arguments that do not match "
                   f"{self._label}{self._signature}: {exc}")
            raise TypeError(msg) from None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_check_from_shape, (self._shape, self._label))


def _check_from_shape(shape: tuple[tuple[str, int, bool], ...], label: str) -> ArgumentCheck:
    params = [inspect.Parameter(name, _KINDS[kind],
                                default=_DEFAULT if has_default else inspect.Parameter.empty)
              for name, kind, has_default in shape]
    return ArgumentCheck(inspect.Signature(params), label)


def argument_check(function: Any, label: str, *,
                   drop_first: bool = False) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    """The check for calls of ``function`` (``drop_first``: an unbound method's ``self``)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or an object without a signature
        return _accept_any
    params = list(signature.parameters.values())
    if drop_first:
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            return _accept_any  # def method(*args): self is in args
        params = params[1:]
        signature = signature.replace(parameters=params)
    kinds = {p.kind for p in params}
    if {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds:
        return _accept_any
    return ArgumentCheck(signature, label)


class RemoteFunction:
    """A function that runs as a task: call ``.remote(...)``, not the function itself."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any] | None = None,
                 payload: FunctionPayload | None = None) -> None:
        self._function = function
        self._options = dict(options or {})
        self._name: str = (getattr(function, "__qualname__", None)
                           or getattr(function, "__name__", None) or "task")
        what = f"@remote function {self._name}"
        check_options(self._options, FUNCTION_OPTIONS, what)
        self._task_options = task_options(self._options, self._name, what)
        self._payload = payload
        # Made on the first .remote and shared with .options() copies: not per call.
        self._check_arguments: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None
        functools.update_wrapper(self, function)

    def _get_payload(self) -> FunctionPayload:
        if self._payload is None:
            self._payload = make_payload(self._function, self._name, self)
        return self._payload

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task; an ObjectRef, or a tuple of them when ``num_returns > 1``.

        Arguments that do not fit the function raise TypeError here, as in Ray.
        """
        check = self._check_arguments
        if check is None:
            check = self._check_arguments = argument_check(self._function, self._name)
        check(args, kwargs)
        refs = runtime.client().submit(self._get_payload(), args, kwargs, self._task_options)
        return refs[0] if len(refs) == 1 else tuple(refs)

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with other options (``num_returns``, ``num_cpus``, ``resources``, ...)."""
        merged = {**self._options, **options}
        return self._copy(RemoteFunction(self._function, merged, self._get_payload()))

    def with_task_options(self, **fields: Any) -> RemoteFunction:
        """A copy with internal task fields set (``kind``, ``pin_worker``): for the front."""
        copy = self._copy(RemoteFunction(self._function, self._options, self._get_payload()))
        copy._task_options = dataclasses.replace(self._task_options, **fields)
        return copy

    def _copy(self, copy: RemoteFunction) -> RemoteFunction:
        copy._check_arguments = self._check_arguments
        return copy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        msg = (f"remote function {self._name} cannot be called directly: use "
               f"{self._name}.remote(...) to run it as a task (then get() the result)")
        raise TypeError(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        if being_pickled(self):  # met inside its own function (it calls itself)
            return (RemoteFunction, (self._function, self._options))
        if self._check_arguments is None:  # the function stays pickled where it goes
            self._check_arguments = argument_check(self._function, self._name)
        return (_rebuild, (self._get_payload(), self._options, self._check_arguments))

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _rebuild(payload: FunctionPayload, options: dict[str, Any],
             check: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None
             ) -> RemoteFunction:
    """A RemoteFunction that arrived inside another task: unpickle its function lazily
    (its arguments are checked by the check that came with it)."""
    function = RemoteFunction(_Lazy(payload), options, payload)
    function._check_arguments = check
    return function


class _Lazy:
    """Stands in for the function until it is really called (only its payload travels)."""

    def __init__(self, payload: FunctionPayload) -> None:
        self.payload = payload
        self.__qualname__ = self.__name__ = payload.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from distkernel.store.serialization import deserialize

        return deserialize(self.payload.data)(*args, **kwargs)
