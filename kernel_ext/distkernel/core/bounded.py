"""``BoundedDict``: what is kept about past tasks and cells, which must not grow with each.

A session may run millions of tasks: a table keyed by task or cell that is only ever
added to would hold memory for every one of them. Each such table keeps its newest
entries up to a capacity, and forgets the oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """An ordered dict of at most ``capacity`` entries: adding a new key past it drops the
    oldest (also through ``setdefault``). Replacing a key's value keeps its place; a user
    that wants least-recently-used order calls ``move_to_end`` on a hit."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"a BoundedDict holds at least one entry, not {capacity}"
            raise ValueError(msg)
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        if len(self) > self.capacity:
            self.popitem(last=False)

    def copy(self) -> BoundedDict[K, V]:
        """A copy with the same capacity (``OrderedDict.copy`` would call the class with
        the entries in its place)."""
        copied: BoundedDict[K, V] = BoundedDict(self.capacity)
        copied.update(self)
        return copied

    def __reduce__(self) -> tuple[Any, tuple[int], None, None, Iterator[tuple[K, V]]]:
        return type(self), (self.capacity,), None, None, iter(self.items())
