"""About how many bytes a task's arguments and results take, for its record on Ray.

Ray pickles them itself, out of our reach; counting them again by pickling would double
its work. Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

#: How many values ``size_of`` looks at in all, whatever the nesting (the rest are not
#: counted): it runs for every call's arguments and results.
SIZED_ITEMS = 1000


_NUMBERS = frozenset({int, float, bool, complex, type(None)})
_CONTAINERS = frozenset({tuple, list, dict})


def size_of(value: Any) -> int:
    """About how many bytes ``value`` takes to send, without pickling it: the buffers of
    arrays, bytes and strings exactly, containers by their items (up to SIZED_ITEMS
    values in all), anything else by its own size in memory.

    It runs three times a call (arguments, keywords, result): the common values, numbers
    and no keywords at all, are told apart by their type alone."""
    kind = type(value)
    if kind in _NUMBERS:
        return sys.getsizeof(value, 0)
    if kind in _CONTAINERS and not value:
        return 0
    total, seen, pending = 0, 0, [value]
    while pending and seen < SIZED_ITEMS:
        item = pending.pop()
        seen += 1
        kind = type(item)
        if kind in _NUMBERS:
            total += sys.getsizeof(item, 0)
            continue
        if kind is tuple and len(item) <= SIZED_ITEMS - seen:
            pending.extend(item)
            continue
        nbytes = getattr(item, "nbytes", None)  # numpy arrays, memoryviews, arrow buffers
        if isinstance(nbytes, int):
            total += nbytes
        elif isinstance(item, (bytes, bytearray, str)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(itertools.islice(item, SIZED_ITEMS - seen))
        elif isinstance(item, dict):
            for key, each in itertools.islice(item.items(), SIZED_ITEMS - seen):
                pending += (key, each)
        else:
            total += sys.getsizeof(item, 0)
    return total
