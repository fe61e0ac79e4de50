"""Ray-compatible names under ``distkernel.util`` (``ray.util.register_serializer`` ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distkernel.serializability import FailureTuple, inspect_serializability
from distkernel.serialization import registry


def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Serialize every ``cls`` instance as ``deserializer(serializer(obj))``.

    Used for puts, task arguments and results alike; the deserializer travels
    with the data, so workers need no registration of their own.
    """
    registry.register(cls, serializer, deserializer)


def deregister_serializer(cls: type) -> None:
    """Back to the default for ``cls``; doing it for an unregistered class does nothing."""
    registry.deregister(cls)


__all__ = ["FailureTuple", "deregister_serializer", "inspect_serializability",
           "register_serializer"]
