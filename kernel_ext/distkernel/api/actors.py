"""``@remote`` on a class: actors, each in a worker process of its own.

``Cup.remote(3)`` returns an ``ActorHandle`` at once; the constructor runs in the
actor's process before any method call. ``handle.la.remote(x)`` returns an
ObjectRef; one actor runs its calls one at a time, in the order each caller
submitted them (``max_concurrency``, ``concurrency_groups`` and ``async def``
methods let it run several at once, as in Ray). A handle holds a counted
reference to the actor (its id is an object id), so passing handles to tasks
keeps the actor alive, and when the last handle anywhere is gone the actor
stops after its queued calls.

As in Ray, an actor holds CPUs, GPUs or custom resources for its whole life
only when its options ask for them (``num_cpus=1``, ...); by default it holds
none, so actors do not take the pool's CPUs away from tasks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from distkernel.api import runtime
from distkernel.api.options import check_options, checked_resources
from distkernel.api.remote_function import argument_check, make_payload
from distkernel.core.exceptions import ActorExit, safe_repr
from distkernel.core.protocol import ActorOptions, FunctionPayload, TaskOptions
from distkernel.core.refs import ObjectRef

#: Options ``@remote(...)`` and ``.options(...)`` take for classes. ``max_pending_calls``,
#: ``allow_out_of_order_execution``, ``object_store_memory`` and ``enable_task_events`` are
#: accepted and have no effect (calls are never refused for being too many; they run in
#: order; the store is shared; the timeline records every call).
ACTOR_OPTIONS = ("name", "max_restarts", "max_task_retries", "num_cpus", "num_gpus", "memory",
                 "resources", "max_concurrency", "concurrency_groups", "lifetime", "namespace",
                 "get_if_exists", "runtime_env", "scheduling_strategy", "max_pending_calls",
                 "allow_out_of_order_execution", "object_store_memory", "enable_task_events")
#: Options ``@method(...)`` takes, as Ray's ``ray.method`` (``enable_task_events`` has no
#: effect: the timeline records every call).
METHOD_OPTIONS = ("num_returns", "concurrency_group", "enable_task_events")
#: Ray's other ``ray.method`` options, refused with what to do instead.
METHOD_REFUSED = {
    "max_task_retries": "set it for the whole actor: @remote(max_task_retries=...)",
    "retry_exceptions": "catch the exception in the method and try again there",
    "tensor_transport": "values travel through the shared-memory object store",
    "_generator_backpressure_num_objects": "methods return values, not streams",
    "_num_objects_per_yield": "methods return values, not streams",
}
#: Ray's default ``max_concurrency`` of an actor with ``async def`` methods.
ASYNC_MAX_CONCURRENCY = 1000
#: The call every actor answers with True once its constructor has run (Ray's name).
READY_METHOD = "__ray_ready__"

_NUM_RETURNS = "__distkernel_num_returns__"
_GROUP = "__distkernel_concurrency_group__"

ArgumentCheck = Callable[[tuple[Any, ...], dict[str, Any]], None]


def method(*args: Any, **options: Any) -> Any:
    """``@method(num_returns=2)`` or ``@method(concurrency_group="io")`` on an actor
    method, as Ray's ``ray.method``."""
    if len(args) == 1 and not options and callable(args[0]):
        return args[0]  # bare @method: the defaults, nothing to mark
    if args:
        msg = f"@method takes keyword options only, e.g. @method(num_returns=2); got {args!r}"
        raise TypeError(msg)
    refused = sorted(set(options) & set(METHOD_REFUSED))
    if refused:
        msg = (f"@method({refused[0]}=...) is not available on the local engine: "
               f"{METHOD_REFUSED[refused[0]]}")
        raise ValueError(msg)
    check_options(options, METHOD_OPTIONS, "@method")
    group = options.get("concurrency_group")
    if group is not None and (not isinstance(group, str) or not group):
        msg = f"@method: concurrency_group must be a group's name, got {safe_repr(group)}"
        raise TypeError(msg)

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        if options.get("num_returns") is not None:
            setattr(function, _NUM_RETURNS, options["num_returns"])
        if group is not None:
            setattr(function, _GROUP, group)
        return function

    return mark


def exit_actor() -> NoReturn:
    """End the actor whose method calls this: the call returns None, later calls raise
    ActorDiedError (Ray's ``ray.actor.exit_actor``)."""
    if not runtime.in_actor():
        msg = ("exit_actor() ends the actor whose method calls it, and was called outside "
               "an actor method; to stop an actor from outside, call kill(handle)")
        raise TypeError(msg)
    reason = "exit_actor() was called"
    raise ActorExit(reason)


@dataclass(frozen=True)
class ClassFacts:
    """What the actor's options and its handles need to know of the class, found once."""

    methods: tuple[tuple[str, int], ...]  # (name, num_returns)
    method_groups: tuple[tuple[str, str], ...]
    is_async: bool
    init_check: ArgumentCheck
    checks: Mapping[str, ArgumentCheck]


def class_facts(cls: type) -> ClassFacts:
    """Methods, their concurrency groups and argument checks; whether any is ``async def``."""
    methods, groups, checks = [], [], {}
    is_async = False
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") and name != "__call__":
            continue
        methods.append((name, getattr(member, _NUM_RETURNS, 1)))
        group = getattr(member, _GROUP, None)
        if group is not None:
            groups.append((name, group))
        is_async = is_async or inspect.iscoroutinefunction(member) or \
            inspect.isasyncgenfunction(member)
        static = inspect.getattr_static(cls, name, None)
        bound = isinstance(static, (staticmethod, classmethod)) or not inspect.isfunction(member)
        checks[name] = argument_check(member, f"{cls.__name__}.{name}", drop_first=not bound)
    return ClassFacts(tuple(methods), tuple(groups), is_async,
                      argument_check(cls, cls.__name__), checks)


def _check_count(value: Any, key: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        msg = f"{what}: {key} must be an int >= 0 (or -1 for unlimited), got {value!r}"
        raise ValueError(msg)
    return 1_000_000 if value == -1 else value


def _check_actor_options(options: dict[str, Any], what: str) -> None:
    """What ``check_options`` does not know: the options only actors take."""
    name, namespace = options.get("name"), options.get("namespace")
    for key, value in (("name", name), ("namespace", namespace)):
        if value is not None and (not isinstance(value, str) or not value):
            msg = f"{what}: {key} must be a non-empty string, got {safe_repr(value)}"
            raise TypeError(msg) if not isinstance(value, str) else ValueError(msg)
    get_if_exists = options.get("get_if_exists")
    if get_if_exists is not None and not isinstance(get_if_exists, bool):
        msg = f"{what}: get_if_exists must be True or False, got {safe_repr(get_if_exists)}"
        raise TypeError(msg)
    if options.get("get_if_exists") and not name:
        msg = f"{what}: get_if_exists=True needs a name: .options(name=..., get_if_exists=True)"
        raise ValueError(msg)
    if options.get("lifetime") not in (None, "detached", "non_detached"):
        msg = (f"{what}: lifetime must be None, 'detached' or 'non_detached', got "
               f"{safe_repr(options['lifetime'])}")
        raise ValueError(msg)
    concurrency = options.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or
                                    not isinstance(concurrency, int) or concurrency < 1):
        msg = f"{what}: max_concurrency must be an int >= 1, got {safe_repr(concurrency)}"
        raise ValueError(msg)
    _concurrency_groups(options.get("concurrency_groups"), what)


def _concurrency_groups(groups: Any, what: str) -> tuple[tuple[str, int], ...]:
    """``concurrency_groups={"io": 2, "compute": 4}``: group name -> calls at once."""
    if groups is None:
        return ()
    if not isinstance(groups, Mapping):
        msg = (f"{what}: concurrency_groups must be a dict of group name to calls at once, "
               f"e.g. {{'io': 2}}, got {type(groups).__name__}")
        raise TypeError(msg)
    for name, count in groups.items():
        if not isinstance(name, str) or not name or isinstance(count, bool) or \
                not isinstance(count, int) or count < 1:
            msg = (f"{what}: concurrency_groups maps names to an int >= 1, got "
                   f"{safe_repr(name)}: {safe_repr(count)}")
            raise ValueError(msg)
    return tuple(groups.items())


def _actor_resources(options: dict[str, Any], what: str) -> tuple[tuple[str, float], ...]:
    """What the actor holds for its life: only what was asked for (Ray's default is none)."""
    held = [(key, float(options[field])) for key, field in (("CPU", "num_cpus"),
                                                            ("GPU", "num_gpus"))
            if options.get(field)]
    held.extend(checked_resources(options.get("resources"), what))
    return tuple(held)


class ActorClass:
    """A class whose instances live in worker processes: call ``.remote(...)`` to start one.

    The class's own attributes stay reachable through it (``Cup.SIZE``), also inside
    the actor's methods, where the class's name means this object.
    """

    def __init__(self, cls: type, options: dict[str, Any] | None = None,
                 payload: FunctionPayload | None = None,
                 facts: ClassFacts | None = None) -> None:
        self._cls = cls
        self._options = dict(options or {})
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__
        what = f"@remote class {cls.__name__}"
        check_options(self._options, ACTOR_OPTIONS, what)
        _check_actor_options(self._options, what)
        self._max_restarts = _check_count(self._options.get("max_restarts", 0), "max_restarts",
                                          what)
        self._max_task_retries = _check_count(self._options.get("max_task_retries", 0),
                                              "max_task_retries", what)
        self._payload = payload
        self._facts = facts  # found on the first .remote(), shared with .options() copies

    def _class_facts(self) -> ClassFacts:
        if self._facts is None:
            self._facts = class_facts(self._cls)
        return self._facts

    def _actor_options(self, facts: ClassFacts) -> ActorOptions:
        options, what = self._options, f"@remote class {self._cls.__name__}"
        groups = _concurrency_groups(options.get("concurrency_groups"), what)
        known = dict(groups)
        for method_name, group in facts.method_groups:
            if group not in known:
                listed = ", ".join(sorted(known)) or "none; give concurrency_groups={...}"
                msg = (f"{what}: method {method_name} is in concurrency group {group!r}, "
                       f"which the actor does not define; its groups: {listed}")
                raise ValueError(msg)
        concurrency = options.get("max_concurrency")
        if concurrency is None:
            concurrency = ASYNC_MAX_CONCURRENCY if facts.is_async else 1
        return ActorOptions(self._cls.__name__, facts.methods, self._max_restarts,
                            self._max_task_retries, options.get("name") or "",
                            options.get("lifetime") == "detached",
                            namespace=options.get("namespace") or "",
                            get_if_exists=bool(options.get("get_if_exists")),
                            resources=_actor_resources(options, what),
                            max_concurrency=concurrency, is_async=facts.is_async,
                            concurrency_groups=groups, method_groups=facts.method_groups)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Start the actor; returns its handle at once (constructor errors show on first get).

        Arguments that do not fit the constructor raise TypeError here, as in Ray.
        """
        facts = self._class_facts()
        facts.init_check(args, kwargs)
        options = self._actor_options(facts)
        if self._payload is None:
            self._payload = make_payload(self._cls, self._cls.__qualname__)
        ref = runtime.client().create_actor(self._payload, args, kwargs, options)
        return ActorHandle(ref, options.class_name, options.methods, options.method_groups,
                           options.concurrency_groups, facts.checks)

    def options(self, **options: Any) -> ActorClass:
        """A copy with other options (``name``, ``num_cpus``, ``max_concurrency``, ...)."""
        return ActorClass(self._cls, {**self._options, **options}, self._payload, self._facts)

    def __getattr__(self, name: str) -> Any:
        cls = self.__dict__.get("_cls")
        # Dunders and IPython's display hooks are the wrapper's own business.
        if cls is None or name.startswith(("__", "_repr_", "_ipython_")):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            msg = f"actor class {cls.__name__} has no attribute {name!r}"
            raise AttributeError(msg) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._cls.__name__
        msg = (f"actor class {name} cannot be instantiated directly: use {name}.remote(...) "
               f"to start an actor and get its handle")
        raise TypeError(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        # The class and options only: argument checks are made again where needed.
        return (ActorClass, (self._cls, self._options))

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__qualname__}>"


class ActorHandle:
    """A handle to one actor: ``handle.method.remote(...)``; pass it to tasks and actors."""

    def __init__(self, ref: ObjectRef, class_name: str,
                 methods: tuple[tuple[str, int], ...],
                 method_groups: tuple[tuple[str, str], ...] = (),
                 concurrency_groups: tuple[tuple[str, int], ...] = (),
                 checks: Mapping[str, ArgumentCheck] | None = None) -> None:
        self._ref = ref
        self._class_name = class_name
        self._methods = dict(methods)
        self._method_groups = dict(method_groups)
        self._group_names = frozenset(name for name, _ in concurrency_groups)
        self._checks = checks or {}  # none in a handle from get_actor: calls go unchecked

    @property
    def actor_id(self) -> str:
        return self._ref.hex()

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if name == READY_METHOD and methods is not None:
            return ActorMethod(self, name, 1)
        if methods is None or name.startswith("__"):
            raise AttributeError(name)
        if name not in methods:
            listed = ", ".join(sorted(m for m in methods if not m.startswith("_"))) or "none"
            msg = (f"actor {self._class_name} has no method {name!r}; its methods: {listed}")
            raise AttributeError(msg)
        return ActorMethod(self, name, methods[name], self._method_groups.get(name, ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._ref, self._class_name, tuple(self._methods.items()),
                              tuple(self._method_groups.items()),
                              tuple((name, 0) for name in sorted(self._group_names)),
                              self._checks or None))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._ref == self._ref

    def __hash__(self) -> int:
        return hash(self._ref)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self.actor_id})"


class ActorMethod:
    """``handle.method``: call ``.remote(...)`` on it."""

    def __init__(self, handle: ActorHandle, name: str, num_returns: int,
                 concurrency_group: str = "") -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._group = concurrency_group

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Queue the call on the actor; an ObjectRef (a tuple when ``num_returns > 1``).

        Arguments that do not fit the method raise TypeError here, as in Ray.
        """
        handle = self._handle
        check = handle._checks.get(self._name)
        if check is not None:
            check(args, kwargs)
        payload, options = _call_descriptors(handle._class_name, self._name, self._num_returns,
                                             self._group)
        refs = runtime.client().submit(payload, args, kwargs, options,
                                       actor_id=handle.actor_id, method=self._name)
        return refs[0] if len(refs) == 1 else tuple(refs)

    def options(self, *, num_returns: int | None = None, concurrency_group: str | None = None,
                **unused: Any) -> ActorMethod:
        """A copy for one call with ``num_returns`` or ``concurrency_group`` set."""
        label = f"{self._handle._class_name}.{self._name}"
        if unused:
            msg = (f"{label}.options() takes num_returns and concurrency_group, got "
                   f"{', '.join(sorted(unused))}")
            raise TypeError(msg)
        count = self._num_returns if num_returns is None else num_returns
        check_options({"num_returns": count}, ("num_returns",), f"{label}.options()")
        group = self._group if concurrency_group is None else concurrency_group
        known = self._handle._group_names
        if concurrency_group is not None and known and concurrency_group not in known:
            msg = (f"{label}.options(concurrency_group={concurrency_group!r}): the actor has "
                   f"no such group; its groups: {', '.join(sorted(known))}")
            raise ValueError(msg)
        return ActorMethod(self._handle, self._name, count, group)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        label = f"{self._handle._class_name}.{self._name}"
        msg = (f"actor method {label} cannot be called directly: use {label}.remote(...) "
               f"(then get() the result)")
        raise TypeError(msg)


@functools.lru_cache(maxsize=4096)
def _call_descriptors(class_name: str, method: str, num_returns: int,
                      concurrency_group: str) -> tuple[FunctionPayload, TaskOptions]:
    """What every call of one method carries: made once, not per call (a hot path)."""
    label = f"{class_name}.{method}"
    return (FunctionPayload("", b"", label),
            TaskOptions(num_returns=num_returns, max_retries=0, name=label,
                        concurrency_group=concurrency_group))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now; its pending and later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        msg = (f"kill() takes an actor handle (what Class.remote() returns), got "
               f"{type(actor).__name__}")
        raise TypeError(msg)
    runtime.client().kill_actor(actor.actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor started with ``.options(name=name)``, in ``namespace``
    (None: the one ``init(namespace=...)`` set). Works in the driver, tasks and actors."""
    for key, value in (("name", name), ("namespace", namespace)):
        if (value is not None or key == "name") and (not isinstance(value, str) or not value):
            msg = f"get_actor(): {key} must be a non-empty string, got {safe_repr(value)}"
            raise TypeError(msg) if not isinstance(value, str) else ValueError(msg)
    found = runtime.client().named_actor(name, namespace)
    if found is None:
        where = f" in namespace {namespace!r}" if namespace is not None else ""
        msg = (f"no actor named {name!r} is alive{where}; start one with "
               f"Class.options(name={name!r}).remote()")
        raise ValueError(msg)
    ref, options = found
    return ActorHandle(ref, options.class_name, options.methods, options.method_groups,
                       options.concurrency_groups)

