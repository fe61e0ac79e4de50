"""What the driver holds for its workers: room lent, regions sent, refs and views borrowed.

Lent: a worker about to write a large value asks the driver for room; the
driver reserves it against the store's capacity, allocates a region and lends
it. The value the worker then hands back (a result, a put, a task's large
arguments) is accepted only if it names a region lent to that same worker,
once, and lies inside it: a message can never make the driver adopt, read or
delete any other file. What a worker does not hand back is released when it
says so, or when it exits.

Sent: a worker reports the arena views it opens only with its next message,
so between sending a region (a task's arguments, a ``get`` reply) and the end
of the run it went with, the driver holds the region itself. A region in use
is then never spilled or reused, whatever the worker has reported so far::

    driver: hold ─ RunTask(seq) ──────────▶ worker: open view ... TaskDone(seq)
                                                    (RefDelta: views) ─┘
    driver: ◀─ RefDelta applied, then TaskDone(seq): release holds of runs <= seq

Borrowed: the ObjectRefs a worker holds and the arena views it keeps open are
counted in the store and the arena on its behalf; a worker that dies cannot
report letting them go, so what it still held is given back for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from distkernel.core.protocol import Place, SharedValue

_Key = tuple[str, int]  # (segment, offset)


class Lent:
    """Regions lent to workers for values they are writing."""

    def __init__(self) -> None:
        self._by_worker: dict[int, dict[_Key, Place]] = {}

    def add(self, worker_id: int, place: Place) -> None:
        self._by_worker.setdefault(worker_id, {})[(place.segment, place.offset)] = place

    def take(self, worker_id: int, value: SharedValue) -> bool:
        """Accept a value a worker wrote: True (and the loan ends) if it fits its loan."""
        loans = self._by_worker.get(worker_id, {})
        place = loans.get((value.segment, value.offset)) if type(value.segment) is str else None
        if place is None or value.spilled is not False or not _inside(value, place):
            return False
        del loans[(value.segment, value.offset)]
        return True

    def give_back(self, worker_id: int, place: Any) -> Place | None:
        """A loan the worker did not use; the place as lent, or None if it was not lent."""
        if not isinstance(place, Place):
            return None
        return self._by_worker.get(worker_id, {}).pop((place.segment, place.offset), None)

    def worker_gone(self, worker_id: int) -> list[Place]:
        return list(self._by_worker.pop(worker_id, {}).values())

    def writers(self) -> set[int]:
        """Workers writing into room lent to them right now."""
        return {worker for worker, loans in self._by_worker.items() if loans}


def _inside(value: SharedValue, place: Place) -> bool:
    """The value's bytes, header and buffers all lie within the loan (a crafted message
    may hold anything in any field)."""
    try:
        if type(value.size) is not int or type(value.header_len) is not int:
            return False
        if value.size != place.size or not 0 <= value.header_len <= value.size:
            return False
        return all(type(offset) is int and type(length) is int and 0 <= offset
                   and 0 <= length and offset + length <= value.size
                   for offset, length in value.buffers)
    except (TypeError, ValueError):
        return False


class Sent:
    """Regions sent to workers, held until the run they went with is over."""

    def __init__(self, hold: Callable[[str, int], None],
                 release: Callable[[str, int], None]) -> None:
        self._hold = hold
        self._release = release
        self._by_worker: dict[int, list[tuple[int, str, int]]] = {}  # (seq, segment, offset)

    def hold(self, worker_id: int, seq: int, values: Iterable[Any]) -> None:
        """``values`` go to a worker with run ``seq`` (or during it)."""
        for value in values:
            if isinstance(value, SharedValue) and not value.spilled:
                self._hold(value.segment, value.offset)
                self._by_worker.setdefault(worker_id, []).append(
                    (seq, value.segment, value.offset))

    def holding(self, worker_id: int) -> bool:
        """Whether anything is held for this worker (a cheap test for the common case)."""
        return bool(self._by_worker.get(worker_id))

    def run_over(self, worker_id: int, seq: int) -> None:
        """The worker finished run ``seq``; runs go in order, so earlier ones are over too."""
        held = self._by_worker.get(worker_id)
        if not held:
            return
        keep = []
        for entry in held:
            if entry[0] <= seq:
                self._release(entry[1], entry[2])
            else:
                keep.append(entry)
        self._by_worker[worker_id] = keep

    def worker_gone(self, worker_id: int) -> None:
        for _seq, segment, offset in self._by_worker.pop(worker_id, ()):
            self._release(segment, offset)


_Held = TypeVar("_Held", bound=Hashable)


class Borrowed(Generic[_Held]):
    """Per worker, how many refs to each object (or views of each region) it holds."""

    def __init__(self) -> None:
        self._by_worker: dict[int, Counter[_Held]] = {}

    def add(self, worker_id: int, key: _Held, count: int = 1) -> None:
        self._by_worker.setdefault(worker_id, Counter())[key] += count

    def worker_gone(self, worker_id: int) -> dict[_Held, int]:
        """What a worker that exited still held: key -> how many."""
        held = self._by_worker.pop(worker_id, Counter())
        return {key: count for key, count in held.items() if count > 0}
