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
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from typing import Any

from distkernel.api import runtime
from distkernel.core import config
from distkernel.core.exceptions import safe_repr
from distkernel.core.protocol import FunctionPayload, TaskOptions
from distkernel.core.refs import ObjectRef
from distkernel.store.serialization import dumps

#: Options ``@remote(...)`` and ``.options(...)`` take for functions. ``memory`` is accepted
#: and not enforced (nothing is reserved); ``enable_task_events`` has no effect (the
#: timeline records every task).
FUNCTION_OPTIONS = ("num_returns", "max_retries", "num_cpus", "num_gpus", "name", "memory",
                    "resources", "retry_exceptions", "scheduling_strategy", "runtime_env",
                    "enable_task_events")

#: Ray options that rest on a multi-node cluster: refused with what to do instead.
REFUSED_OPTIONS = {
    "placement_group": "placement groups reserve resources across the nodes of a Ray "
                       "cluster and the local engine has one node; give num_cpus, num_gpus "
                       "or resources to the task or actor itself",
    "accelerator_type": "the local engine does not tell GPU models apart; ask for num_gpus",
    "label_selector": "node labels choose among the nodes of a Ray cluster and the local "
                      "engine has one node; drop the option",
    "max_calls": "the local engine reuses its workers for every task; drop the option (to "
                 "give a GPU's memory back, free it at the end of the task)",
}
for _name in ("placement_group_bundle_index", "placement_group_capture_child_tasks"):
    REFUSED_OPTIONS[_name] = REFUSED_OPTIONS["placement_group"]
for _name in ("fallback_strategy", "_labels"):
    REFUSED_OPTIONS[_name] = REFUSED_OPTIONS["label_selector"]

#: ``scheduling_strategy`` values the local engine takes (one node: both mean the same).
SCHEDULING_STRATEGIES = (None, "DEFAULT", "SPREAD")


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


# -- options ------------------------------------------------------------------------------

def check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """Unknown names and bad values fail here, with the valid choices (habit 5)."""
    unknown = sorted(set(options) - set(allowed))
    refused = [name for name in unknown if name in REFUSED_OPTIONS]
    if refused:
        name = refused[0]
        msg = f"{what}: the option {name} is not available on the local engine: " \
              f"{REFUSED_OPTIONS[name]}"
        raise ValueError(msg)
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
    for key in ("num_cpus", "num_gpus", "memory"):
        check_amount(options.get(key), key, what)
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        msg = (f"{what}: num_gpus must be below 1 (a share of one GPU) or a whole number, "
               f"got {gpus!r}")
        raise ValueError(msg)
    checked_resources(options.get("resources"), what)
    _check_placement(options, what)


def check_amount(value: Any, key: str, what: str) -> None:
    """A resource amount: None (the default) or a finite number >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or value < 0:
        msg = f"{what}: {key} must be a number >= 0, got {safe_repr(value)}"
        raise ValueError(msg)


def checked_resources(resources: Any, what: str) -> tuple[tuple[str, float], ...]:
    """A ``resources={name: amount}`` dict as sorted ``(name, amount)`` pairs, checked.

    CPUs and GPUs have keywords of their own (as in Ray), so they are refused here.
    """
    if resources is None:
        return ()
    if not isinstance(resources, Mapping):
        msg = (f"{what}: resources must be a dict of resource name to amount, e.g. "
               f"resources={{'db': 1}}, got {type(resources).__name__}")
        raise TypeError(msg)
    for name, amount in resources.items():
        if name in ("CPU", "GPU"):
            keyword = "num_cpus" if name == "CPU" else "num_gpus"
            msg = (f"{what}: resources={{{name!r}: ...}} is not how {name}s are asked for; "
                   f"use {keyword}=... (resources is for custom names)")
            raise ValueError(msg)
        if not isinstance(name, str) or not name:
            msg = f"{what}: resource names must be non-empty strings, got {safe_repr(name)}"
            raise TypeError(msg)
        check_amount(amount, f"resources[{name!r}]", what)
    return tuple(sorted((name, float(amount)) for name, amount in resources.items()))


def _check_placement(options: dict[str, Any], what: str) -> None:
    """``scheduling_strategy`` and a per-call ``runtime_env``: what one node can honour."""
    strategy = options.get("scheduling_strategy")
    if not isinstance(strategy, (str, type(None))) or strategy not in SCHEDULING_STRATEGIES:
        msg = (f"{what}: scheduling_strategy={safe_repr(strategy)} cannot be honoured by the "
               f"local engine, which has one node; use 'DEFAULT' or 'SPREAD' (both mean "
               f"any free worker), or drop the option")
        raise ValueError(msg)
    runtime_env = options.get("runtime_env")
    if runtime_env:  # None and {} ask for nothing
        msg = (f"{what}: runtime_env per task or actor is not available on the local engine, "
               f"whose workers all share one environment; give it to init(runtime_env=...) "
               f"(env_vars and working_dir are supported)")
        raise ValueError(msg)
    enable_events = options.get("enable_task_events")
    if enable_events is not None and not isinstance(enable_events, bool):
        msg = f"{what}: enable_task_events must be True or False, got {safe_repr(enable_events)}"
        raise TypeError(msg)


def retry_exceptions_field(value: Any, what: str) -> bool | bytes:
    """``retry_exceptions`` as TaskOptions carries it: a bool, or the pickled tuple of
    exception classes to retry on (the driver, which has the classes, checks them)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (list, tuple)) and all(
            isinstance(c, type) and issubclass(c, Exception) for c in value):
        return dumps(tuple(value)) if value else False
    msg = (f"{what}: retry_exceptions must be True, False or a list of exception classes "
           f"(e.g. [ConnectionError]), got {safe_repr(value)}")
    raise TypeError(msg)


def task_options(options: dict[str, Any], default_name: str, what: str) -> TaskOptions:
    """The checked options as the engine takes them."""
    max_retries = options.get("max_retries")
    max_retries = config.DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    num_cpus = options.get("num_cpus")
    return TaskOptions(num_returns=options.get("num_returns") or 1,
                       max_retries=1_000_000 if max_retries == -1 else max_retries,
                       num_cpus=1 if num_cpus is None else num_cpus,
                       name=options.get("name") or default_name,
                       num_gpus=options.get("num_gpus") or 0,
                       resources=checked_resources(options.get("resources"), what),
                       retry_exceptions=retry_exceptions_field(
                           options.get("retry_exceptions"), what))


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
        from distkernel.api.actors import ActorClass

        return ActorClass(target, options)
    if isinstance(target, (RemoteFunction, ObjectRef)) or not callable(target):
        msg = f"@remote needs a function or a class, got {type(target).__name__}"
        raise TypeError(msg)
    return RemoteFunction(target, options)
