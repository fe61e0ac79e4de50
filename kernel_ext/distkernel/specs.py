"""Turning a call ``f.remote(*args, **kwargs)`` into a TaskSpec, in the driver or a worker."""

from __future__ import annotations

from typing import Any

from distkernel.protocol import FunctionPayload, TaskOptions, TaskSpec
from distkernel.refs import ObjectRef, new_id
from distkernel.serialization import Serialized, serialize


def serialize_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Serialized:
    """Pickle the call's arguments once; refs inside stay refs (SPEC §2)."""
    return serialize((args, kwargs))


def top_level_refs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Ids of refs passed directly as arguments: the task waits for their values."""
    found = [a.hex() for a in args if type(a) is ObjectRef]
    found.extend(v.hex() for v in kwargs.values() if type(v) is ObjectRef)
    return tuple(dict.fromkeys(found))


def make_spec(function: FunctionPayload, options: TaskOptions, args_value: Any,
              top_level: tuple[str, ...], *, kind: str = "task", actor_id: str = "",
              method: str = "") -> TaskSpec:
    count = options.num_returns
    return TaskSpec(task_id=new_id(), name=options.name or function.name, kind=kind,  # type: ignore[arg-type]
                    function_hash=function.function_hash, args=args_value,
                    top_level_refs=top_level, return_ids=tuple(new_id() for _ in range(count)),
                    max_retries=options.max_retries, actor_id=actor_id, method=method)
