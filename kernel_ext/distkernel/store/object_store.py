"""The object store: small values inline, large ones in the driver's arena, or spilled.

A large value is laid out as its pickle header followed by each out-of-band
buffer, 64-byte aligned, in a region of the arena (see ``arena``)::

    [ header | pad | buffer 0 | pad | buffer 1 | ... ]

The driver allocates every region, under its lock, against the store's
capacity, before anyone writes: the driver copies its puts and large task
arguments in through its own mapping; a worker writes its results and puts
into the region it was given, through the file. The driver's ``ObjectStore``
owns the value from then on, counts references and frees it when the last
one is gone. Readers map a value read-only and unpickle with the buffers as
memoryviews into the mapping, so a numpy array comes back as a read-only
zero-copy view. A spilled value is read the same way, from its file on disk.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from distkernel.core import config
from distkernel.core.exceptions import ObjectStoreFullError
from distkernel.core.protocol import InlineValue, Place, SharedValue, Value
from distkernel.store.serialization import Serialized, deserialize

_ALIGN = 64


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def layout(serialized: Serialized) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Total size of a value and the (offset, length) of each buffer."""
    offset = len(serialized.header)
    spans = []
    for buffer in serialized.buffers:
        offset = _aligned(offset)
        length = buffer.raw().nbytes
        spans.append((offset, length))
        offset += length
    return max(offset, 1), tuple(spans)


def stored_size(serialized: Serialized) -> int:
    """What a value costs the store: its bytes inline, its laid-out size in shared memory."""
    if serialized.nbytes < config.INLINE_THRESHOLD:
        return serialized.nbytes
    return layout(serialized)[0]


def to_inline(serialized: Serialized, *, is_error: bool = False) -> InlineValue:
    buffers = serialized.buffers
    return InlineValue(serialized.header,
                       tuple(bytes(b.raw()) for b in buffers) if buffers else (),
                       tuple(serialized.contained), is_error)


def write_into(view: memoryview, serialized: Serialized) -> tuple[tuple[int, int], ...]:
    """Copy a value into writable memory (the driver's mapping of a region)."""
    _, spans = layout(serialized)
    view[:len(serialized.header)] = serialized.header
    for (offset, length), buffer in zip(spans, serialized.buffers):
        view[offset:offset + length] = buffer.raw()
    return spans


def write_to_file(path: str, place: Place, serialized: Serialized, *,
                  is_error: bool = False) -> SharedValue:
    """Copy a value into the region a worker was given: one ``pwrite`` per part.

    Writing through the file, not a mapping, costs no page fault per page, and the
    worker keeps no mapping that would hold the chunk's memory once it is given back.
    """
    size, spans = layout(serialized)
    if size > place.size:
        msg = f"a value of {size} bytes does not fit the {place.size} bytes set aside for it"
        raise ValueError(msg)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, memoryview(serialized.header), place.offset)
        for (offset, _length), buffer in zip(spans, serialized.buffers):
            _write_all(fd, buffer.raw(), place.offset + offset)
    finally:
        os.close(fd)
    return SharedValue(place.segment, size, len(serialized.header), spans,
                       tuple(serialized.contained), is_error, place.offset)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    written = 0
    while written < data.nbytes:
        written += os.pwrite(fd, data[written:], offset + written)


def map_readonly(path: str, value: SharedValue,
                 on_close: Callable[[], None] | None = None) -> memoryview:
    """A read-only view of a value's bytes; valid after the file is unlinked.

    ``on_close`` runs when the last view derived from it (a numpy array, ...) is gone.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mapping = mmap.mmap(fd, value.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                            offset=value.offset)
    finally:
        os.close(fd)
    if on_close is not None:
        weakref.finalize(mapping, on_close)
    return memoryview(mapping)


def load(value: Value, view: memoryview | None = None) -> Any:
    """Unpickle a stored value; buffers of a shared value are zero-copy, read-only views
    into ``view``, the value's mapping. Buffers of an inline value are copied once into
    64-byte aligned memory (as Ray aligns every buffer): a ``bytes`` object's data is
    not aligned, and SIMD code or a library checking ``arr.ctypes.data`` may need it."""
    if isinstance(value, InlineValue):
        if not value.buffers:
            return deserialize(value.header)
        return deserialize(value.header, _aligned_copies(value.buffers))
    assert view is not None, "a shared value is read through its mapping"
    buffers = [view[offset:offset + length] for offset, length in value.buffers]
    return deserialize(view[:value.header_len], buffers)


def _aligned_copies(buffers: tuple[bytes, ...]) -> list[memoryview]:
    """Read-only views of copies of ``buffers``, each starting on a 64-byte boundary of
    one block (values under ``INLINE_THRESHOLD``: one small allocation and copy)."""
    block = bytearray(sum(_aligned(len(b)) for b in buffers) + _ALIGN)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(block)) % _ALIGN
    whole = memoryview(block)[start:]  # starts on a boundary: offsets below are aligned
    views = []
    offset = 0
    for buffer in buffers:
        end = offset + len(buffer)
        whole[offset:end] = buffer
        views.append(whole[offset:end].toreadonly())
        offset = _aligned(end)
    return views


class Reclaimer:
    """Unlinks files on a thread of its own.

    Freeing a file returns its pages to the kernel, about 120 ms per GiB here:
    done under the engine's lock it would stall every other call.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, path: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distkernel-reclaim",
                                                daemon=True)
                self._thread.start()
        self._queue.put(path)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def close(self, timeout: float = 10.0) -> None:
        """Finish every pending unlink, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


@dataclass(slots=True)
class Entry:
    """What the driver knows of one object."""

    value: Value | None = None  # None while the task that makes it is still running
    refs: int = 0  # ObjectRefs alive in the driver plus workers borrowing it
    pins: int = 0  # tasks that need it, objects that contain a ref to it
    view: memoryview | None = None  # the driver's read-only mapping, made on first use
    contained: tuple[str, ...] = field(default=())
    # Who made a large object ("put" or the task's name) and the tag of the notebook cell
    # it came from: what the side panel shows next to the largest objects.
    made_by: str = ""
    cell: str | None = None


class ObjectStore:
    """The driver's table of objects: values, reference counts, capacity.

    Not thread-safe on its own: the engine calls it under its one lock. ``used``
    counts the bytes of values in memory (inline or in the arena) and of regions
    set aside for values being written; ``spilled`` the bytes of values on disk.
    ``free_shared`` gives a shared value's room back (its region, or its file).
    """

    def __init__(self, capacity: int, free_shared: Callable[[SharedValue], None]) -> None:
        self.capacity = capacity
        self.used = 0
        self.spilled = 0
        self.errors = 0  # stored objects whose value is an error (get raises it)
        self.errors_sealed = 0  # ever: a get rescans its objects for errors when this moves
        self._entries: dict[str, Entry] = {}
        self._free_shared = free_shared
        # Objects whose value is in the arena, least recently used first: what to spill.
        self._resident: OrderedDict[str, None] = OrderedDict()

    # -- capacity --------------------------------------------------------------------------

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.capacity

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` against the capacity, or raise ObjectStoreFullError with numbers."""
        if not self.fits(nbytes):
            raise self.full_error(nbytes)
        self.used += nbytes

    def full_error(self, nbytes: int, advice: str = "") -> ObjectStoreFullError:
        """The error for a request that does not fit, with the numbers and what to do."""
        spilled = (f" (and {config.format_bytes(self.spilled)} spilled to disk)"
                   if self.spilled else "")
        advice = advice or (f"Delete ObjectRefs you no longer need (objects are freed when no "
                            f"ref is alive), or start with a larger store: "
                            f"init(object_store_memory='{_suggest(self.used + nbytes)}')")
        msg = (f"the object store is full: capacity {config.format_bytes(self.capacity)}, "
               f"used {config.format_bytes(self.used)} by {len(self._entries)} objects"
               f"{spilled}, requested {config.format_bytes(nbytes)}. Nothing stored was "
               f"lost. {advice}")
        return ObjectStoreFullError(msg)

    def release(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)

    # -- objects ---------------------------------------------------------------------------

    def __contains__(self, object_id: str) -> bool:
        return object_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, object_id: str) -> Entry | None:
        return self._entries.get(object_id)

    def expect(self, object_id: str) -> Entry:
        """Register an object whose value a task will produce."""
        entry = self._entries.get(object_id)
        if entry is None:
            entry = self._entries[object_id] = Entry()
        return entry

    def seal(self, object_id: str, value: Value) -> list[str]:
        """Store ``value`` (its ``nbytes`` already reserved); returns ids freed meanwhile.

        A value for an object nobody references any more is dropped at once.
        """
        entry = self._entries.get(object_id)
        if entry is None:
            self.discard(value)
            return []
        entry.value = value
        entry.contained = value.contained
        if value.is_error:
            self.errors += 1
            self.errors_sealed += 1
        if isinstance(value, SharedValue) and not value.spilled:
            self._resident[object_id] = None
        for inner in value.contained:
            self.pin(inner)
        if entry.refs <= 0 and entry.pins <= 0:
            return self._free(object_id)
        return []

    def value(self, object_id: str) -> Value | None:
        entry = self._entries.get(object_id)
        return entry.value if entry is not None else None

    def touch(self, object_id: str) -> None:
        """The object was just read: it is the last to be spilled."""
        if object_id in self._resident:
            self._resident.move_to_end(object_id)

    def resident(self) -> Iterator[str]:
        """Ids of objects in the arena, least recently used first. Changing the store ends
        the iteration: stop iterating once you have (as spilling one object does)."""
        return iter(self._resident)

    def swap_value(self, object_id: str, value: SharedValue) -> SharedValue:
        """Move an object to disk (a spilled value) or back (an arena value); returns the
        value it had, whose room the caller gives back. The driver's view is dropped."""
        entry = self._entries[object_id]
        old = entry.value
        assert isinstance(old, SharedValue)
        entry.value, entry.view = value, None
        if value.spilled and not old.spilled:
            self._resident.pop(object_id, None)
            self.used -= old.size
            self.spilled += value.size
        elif old.spilled and not value.spilled:
            self._resident[object_id] = None
            self.spilled -= old.size  # the arena value's bytes were reserved by the caller
        return old

    def add_refs(self, object_id: str, count: int = 1) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.refs += count

    def remove_refs(self, object_id: str, count: int = 1) -> list[str]:
        entry = self._entries.get(object_id)
        if entry is None:
            return []
        entry.refs -= count
        return self._maybe_free(object_id, entry)

    def pin(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.pins += 1

    def unpin(self, object_id: str) -> list[str]:
        entry = self._entries.get(object_id)
        if entry is None:
            return []
        entry.pins -= 1
        return self._maybe_free(object_id, entry)

    def hold_until_freed(self, object_id: str, pinned: Sequence[str]) -> list[str]:
        """``pinned`` (already pinned) stay until ``object_id`` is freed, as the refs inside
        a value do: an actor keeps its constructor's arguments for a restart. If it is gone
        already, they are let go now; returns ids freed."""
        entry = self._entries.get(object_id)
        if entry is None:
            return self.unpin_all(pinned)
        entry.contained += tuple(pinned)
        return []

    def unpin_all(self, object_ids: Iterable[str]) -> list[str]:
        freed: list[str] = []
        for object_id in object_ids:
            freed.extend(self.unpin(object_id))
        return freed

    def _maybe_free(self, object_id: str, entry: Entry) -> list[str]:
        if entry.refs <= 0 and entry.pins <= 0 and entry.value is not None:
            return self._free(object_id)
        if entry.refs <= 0 and entry.pins <= 0 and entry.value is None:
            # Still being computed and nobody wants it: forget it; its value is dropped on arrival.
            del self._entries[object_id]
            return [object_id]
        return []

    def _free(self, object_id: str) -> list[str]:
        entry = self._entries.pop(object_id)
        self._resident.pop(object_id, None)
        if entry.value is not None:
            self.errors -= entry.value.is_error
            self.discard(entry.value)
        entry.view = None
        freed = [object_id]
        for inner in entry.contained:
            freed.extend(self.unpin(inner))
        return freed

    def discard(self, value: Value) -> None:
        if isinstance(value, SharedValue) and value.spilled:
            self.spilled = max(0, self.spilled - value.size)
        else:
            self.release(value.nbytes)
        if isinstance(value, SharedValue):
            self._free_shared(value)

    def largest(self, count: int) -> list[tuple[str, Entry]]:
        """The ``count`` largest objects in shared memory or spilled, largest first."""
        shared = ((object_id, entry) for object_id, entry in self._entries.items()
                  if type(entry.value) is SharedValue)
        return heapq.nlargest(count, shared, key=lambda item: item[1].value.nbytes)  # type: ignore[union-attr]

    def stats(self) -> dict[str, int]:
        """Capacity, used bytes and object count (``object_count`` names it as the spec does)."""
        values = [e.value for e in self._entries.values() if e.value is not None]
        spilled = sum(1 for v in values if isinstance(v, SharedValue) and v.spilled)
        return {"capacity": self.capacity, "used_bytes": self.used, "num_objects": len(values),
                "object_count": len(values), "spilled_bytes": self.spilled,
                "spilled_objects": spilled}

    def clear(self) -> None:
        """Free everything (shutdown)."""
        for entry in self._entries.values():
            if entry.value is not None:
                self.discard(entry.value)
            entry.view = None
        self._entries.clear()
        self._resident.clear()
        self.used = 0
        self.spilled = 0
        self.errors = 0


def _suggest(nbytes: int) -> str:
    gib = 1024**3
    return f"{max(1, -(-nbytes * 2 // gib))}GiB"
