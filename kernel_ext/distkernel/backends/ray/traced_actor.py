"""An actor class as it runs on Ray for us: its methods ``traced`` (``runner``), its
constructor given the actor's id (ours), and two methods of our own: one that says how
the actor was made, for a handle that did not make it, and one that takes the driver's
serializer registry.

Ray's workers import this module: it needs only the standard library and Ray.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from distkernel.backends.ray import runner
from distkernel.backends.ray.report_channel import ChannelAddress

#: The attribute of a ``traced_class`` naming its traced methods.
TRACED = "_distkernel_traced"
#: The method of a ``traced_class`` that says how the actor was made (its options).
DESCRIBE = "_distkernel_describe"
#: The keyword an actor's constructor is given its id in (ours, which its handles carry):
#: what ``get_runtime_context().get_actor_id()`` answers inside it.
ACTOR_ID_KEYWORD = "_distkernel_actor_id"
#: The method of a ``traced_class`` an actor is given the registry by (Ray would not take
#: an extra keyword on its methods), before the calls that follow it.
USE_REGISTRY = "_distkernel_use_registry"


def traced_class(cls: type, methods: tuple[tuple[str, int], ...], options: Any,
                 setup: Callable[[], object] | None = None,
                 channel: ChannelAddress | None = None) -> type:
    """An actor class whose listed methods are ``traced`` (each with its num_returns, and
    ``channel``); its ``TRACED`` attribute names them (static and class methods are left
    as they are). Its ``DESCRIBE`` method returns ``options``, those names and whether
    they return their report: what a caller that did not make the actor needs."""
    namespace: dict[str, Any] = {
        name: runner.traced(getattr(cls, name), num_returns, setup, channel)
        for name, num_returns in methods
        if inspect.isfunction(inspect.getattr_static(cls, name, None))}  # plain methods only
    namespace[TRACED] = frozenset(namespace)
    original_init = getattr(cls, "__init__")  # noqa: B009 - the class, not an instance

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _take_actor_id(kwargs)
        if setup is not None:
            setup()
        original_init(self, *args, **kwargs)

    if inspect.isfunction(original_init):  # not object's: Ray reads a Python signature
        runner.standing_for(original_init)(__init__)
        runner.taking_keyword(__init__, original_init, ACTOR_ID_KEYWORD)
    namespace["__init__"] = __init__
    namespace[DESCRIBE] = functools.partialmethod(_describe, options, channel is None)
    namespace[USE_REGISTRY] = _accept_registry
    namespace["__module__"] = cls.__module__
    namespace["__qualname__"] = cls.__qualname__
    return type(cls.__name__, (cls,), namespace)


#: The id of the actor this process holds, as its handles have it (ours), once one is made.
this_actor = {"id": ""}


def _take_actor_id(kwargs: dict[str, Any]) -> None:
    """The actor's id, out of its constructor's arguments. (A module function, which Ray's
    pickler sends by name: the constructor's wrapper travels by value, and a global it
    named itself would be a copy.)"""
    this_actor["id"] = kwargs.pop(ACTOR_ID_KEYWORD, None) or ""


def _accept_registry(self: Any, data: bytes) -> None:
    runner.use_registry(data)


def _describe(self: Any, options: Any,
              returns_report: bool) -> tuple[Any, frozenset[str], bool]:
    return options, getattr(type(self), TRACED), returns_report
