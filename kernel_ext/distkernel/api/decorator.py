"""``@remote``: a function becomes a RemoteFunction, a class an ActorClass."""

from __future__ import annotations

from typing import Any

from distkernel.api.actors import ActorClass
from distkernel.api.remote_function import RemoteFunction
from distkernel.core.refs import ObjectRef


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
        return ActorClass(target, options)
    if isinstance(target, (RemoteFunction, ObjectRef)) or not callable(target):
        msg = f"@remote needs a function or a class, got {type(target).__name__}"
        raise TypeError(msg)
    return RemoteFunction(target, options)
