"""Turning a call ``f.remote(*args, **kwargs)`` into a TaskSpec, in the driver or a worker."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from distkernel.core.exceptions import SerializationError
from distkernel.core.protocol import FunctionPayload, TaskKind, TaskOptions, TaskSpec, Value
from distkernel.core.refs import ObjectRef, new_id
from distkernel.store.pickler import try_dumps
from distkernel.store.serializability import explain_failure
from distkernel.store.serialization import Serialized, serialize


def serialize_arguments(args: tuple[Any, ...], kwargs: dict[str, Any],
                        call: str = "the task") -> Serialized:
    """Pickle the call's arguments once; refs inside stay refs (SPEC §2).

    When one cannot travel, the error names which argument, then the path inside it.
    """
    try:
        return serialize((args, kwargs))
    except SerializationError as exc:
        raise _name_argument(args, kwargs, call, exc) from exc.__cause__


def _name_argument(args: tuple[Any, ...], kwargs: dict[str, Any], call: str,
                   fallback: SerializationError) -> SerializationError:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k}=", v) for k, v in kwargs.items()]
    for label, value in named:
        error = try_dumps(value)
        if error is not None:
            inner = explain_failure(value, error)
            outer = SerializationError(f"{label} of {call}: {inner}")
            outer.path = getattr(inner, "path", "")  # type: ignore[attr-defined]
            outer.culprit_type = getattr(inner, "culprit_type", "")  # type: ignore[attr-defined]
            return outer
    return fallback


def top_level_refs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Ids of refs passed directly as arguments: the task waits for their values."""
    found = [a.hex() for a in args if type(a) is ObjectRef]
    if kwargs:
        found.extend(v.hex() for v in kwargs.values() if type(v) is ObjectRef)
    return tuple(dict.fromkeys(found)) if found else ()


class PreparedCall(NamedTuple):
    spec: TaskSpec
    serialized: Serialized  # the arguments, pickled once
    args_id: str  # the stored object holding them, or "" when they travel in the spec


#: Keeps pickled arguments where the task can read them: their value, and the id of the
#: object they were stored as ("" when small enough to travel inside the spec).
StoreArguments = Callable[[Serialized], tuple[Value, str]]


def prepare_call(function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: TaskOptions, store_arguments: StoreArguments, *,
                 kind: TaskKind = "task", actor_id: str = "", method: str = "") -> PreparedCall:
    """``function.remote(*args, **kwargs)`` as a spec, the same in the driver and in a
    worker: arguments pickled once (outside any lock), stored by ``store_arguments``."""
    serialized = serialize_arguments(args, kwargs, f"{function.name}.remote(...)")
    args_value, args_id = store_arguments(serialized)
    spec = make_spec(function, options, args_value, top_level_refs(args, kwargs),
                     kind=kind, actor_id=actor_id, method=method)
    return PreparedCall(spec, serialized, args_id)


def make_spec(function: FunctionPayload, options: TaskOptions, args_value: Value,
              top_level: tuple[str, ...], *, kind: TaskKind = "task", actor_id: str = "",
              method: str = "") -> TaskSpec:
    """A task, an actor method call (``method``) or an actor creation (returns ``actor_id``)."""
    if kind == "actor_create":
        return_ids: tuple[str, ...] = (actor_id,)
    elif options.num_returns == 1:
        return_ids = (new_id(),)
    else:
        return_ids = tuple(new_id() for _ in range(options.num_returns))
    if kind == "task":
        kind = options.kind
    # By position (the fields' order): keywords cost a dataclass a third more here.
    return TaskSpec(new_id(), options.name or function.name, kind, function.function_hash,
                    args_value, top_level, return_ids, options.max_retries, actor_id, method,
                    options.pin_worker,
                    task_resources(options) if kind in ("task", "cell") else (),
                    options.retry_exceptions)


def task_resources(options: TaskOptions) -> tuple[tuple[str, float], ...]:
    """What a task holds while it runs; () for the common case, one CPU and nothing else."""
    if options.num_cpus == 1 and not options.num_gpus and not options.resources:
        return ()
    needs = [("CPU", float(options.num_cpus))]
    if options.num_gpus:
        needs.append(("GPU", float(options.num_gpus)))
    return (*needs, *((name, float(amount)) for name, amount in options.resources))


def exception_kinds(pickled: bytes) -> tuple[type[BaseException], ...]:
    """The exception classes a task's retry_exceptions names (pickled once per function)."""
    kinds = pickle.loads(pickled)
    return tuple(kinds) if isinstance(kinds, (tuple, list)) else (kinds,)
