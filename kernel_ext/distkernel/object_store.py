"""The object store: small values inline, large ones in shared-memory segments.

A segment is one file in ``/dev/shm`` named ``distkernel-<driver pid>-<object id>``,
mode 0600, holding the pickle header at offset 0 followed by each out-of-band
buffer, 64-byte aligned::

    [ header | pad | buffer 0 | pad | buffer 1 | ... ]

Writers (the driver for ``put`` and task arguments, a worker for its results
and its own puts) create and fill a segment; the driver's ``ObjectStore`` owns
it from then on, counts references and unlinks it when the last one is gone.
Readers map a segment read-only and unpickle with the buffers as memoryviews
into the mapping, so a numpy array comes back as a read-only zero-copy view.
Unlinking never invalidates a mapping still in use: the kernel frees the pages
only when the last view is gone.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from distkernel import config
from distkernel.exceptions import ObjectStoreFullError
from distkernel.protocol import InlineValue, SharedValue, Value
from distkernel.serialization import Serialized, deserialize

_ALIGN = 64


def segment_path(name: str) -> str:
    return os.path.join(config.SHM_DIR, name)


def segment_name(driver_pid: int, object_id: str) -> str:
    return f"{config.SEGMENT_PREFIX}{driver_pid}-{object_id}"


def object_id_of_segment(name: str) -> str:
    """``distkernel-<pid>-<object id>`` -> ``<object id>``."""
    return name[len(config.SEGMENT_PREFIX):].split("-", 1)[1]


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def layout(serialized: Serialized) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Total segment size and the (offset, length) of each buffer."""
    offset = len(serialized.header)
    spans = []
    for buffer in serialized.buffers:
        offset = _aligned(offset)
        length = buffer.raw().nbytes
        spans.append((offset, length))
        offset += length
    return max(offset, 1), tuple(spans)


def to_inline(serialized: Serialized, *, is_error: bool = False) -> InlineValue:
    return InlineValue(serialized.header, tuple(bytes(b.raw()) for b in serialized.buffers),
                       tuple(serialized.contained), is_error)


def write_segment(name: str, serialized: Serialized, *, is_error: bool = False) -> SharedValue:
    """Create segment ``name`` and copy the value in: one memcpy per buffer."""
    size, spans = layout(serialized)
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # pwrite, not a fresh mmap: tmpfs fills pages without a page fault each (2x faster).
        os.ftruncate(fd, size)
        _write_all(fd, memoryview(serialized.header), 0)
        for (offset, _length), buffer in zip(spans, serialized.buffers):
            _write_all(fd, buffer.raw(), offset)
    except BaseException:
        _unlink_quietly(path)
        raise
    finally:
        os.close(fd)
    return SharedValue(name, size, len(serialized.header), spans,
                       tuple(serialized.contained), is_error)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    written = 0
    while written < data.nbytes:
        written += os.pwrite(fd, data[written:], offset + written)


def pack(serialized: Serialized, driver_pid: int, object_id: str, *,
         is_error: bool = False) -> Value:
    """Inline below the threshold, else a new segment named for ``object_id``."""
    if serialized.nbytes < config.INLINE_THRESHOLD:
        return to_inline(serialized, is_error=is_error)
    return write_segment(segment_name(driver_pid, object_id), serialized, is_error=is_error)


def write_into(view: memoryview, serialized: Serialized) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Copy a value into writable memory (an arena region): one memcpy per buffer."""
    size, spans = layout(serialized)
    header_len = len(serialized.header)
    view[:header_len] = serialized.header
    for (offset, length), buffer in zip(spans, serialized.buffers):
        view[offset:offset + length] = buffer.raw()
    return size, spans


def map_readonly(value: SharedValue, on_close: Callable[[], None] | None = None) -> memoryview:
    """A read-only view of a value's bytes; valid after the segment is unlinked.

    ``on_close`` runs when the last view derived from it (a numpy array, ...) is gone.
    """
    fd = os.open(segment_path(value.segment), os.O_RDONLY)
    try:
        mapping = mmap.mmap(fd, value.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                            offset=value.offset)
    finally:
        os.close(fd)
    if on_close is not None:
        weakref.finalize(mapping, on_close)
    return memoryview(mapping)


def load(value: Value, view: memoryview | None = None,
         on_close: Callable[[], None] | None = None) -> Any:
    """Unpickle a stored value; buffers of a shared value are zero-copy, read-only views."""
    if isinstance(value, InlineValue):
        return deserialize(value.header, [memoryview(b).toreadonly() for b in value.buffers])
    if view is None:
        view = map_readonly(value, on_close)
    buffers = [view[offset:offset + length] for offset, length in value.buffers]
    return deserialize(view[:value.header_len], buffers)


def remove_segment(name: str) -> None:
    _unlink_quietly(segment_path(name))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Reclaimer:
    """Unlinks segments on a thread of its own.

    Freeing a segment returns its pages to the kernel, about 120 ms per GiB
    here: done under the engine's lock it would stall every other call.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, name: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distkernel-reclaim",
                                                daemon=True)
                self._thread.start()
        self._queue.put(name)

    def _run(self) -> None:
        while (name := self._queue.get()) is not None:
            remove_segment(name)

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
    view: memoryview | None = None  # the driver's read-only mapping (arena: made at put)
    contained: tuple[str, ...] = field(default=())


class ObjectStore:
    """The driver's table of objects: values, reference counts, capacity.

    Not thread-safe on its own: the runtime calls it under its one lock. Bulk
    copies into segments happen outside that lock (``write_segment``).
    """

    def __init__(self, capacity: int, driver_pid: int,
                 unlink: Callable[[str], None] = remove_segment,
                 release_region: Callable[[str, int], None] | None = None) -> None:
        self.capacity = capacity
        self.driver_pid = driver_pid
        self.used = 0
        self._entries: dict[str, Entry] = {}
        self._unlink = unlink
        self._release_region = release_region

    # -- capacity --------------------------------------------------------------------------

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` against the capacity, or raise ObjectStoreFullError with numbers."""
        if self.used + nbytes > self.capacity:
            msg = (f"the object store is full: capacity {config.format_bytes(self.capacity)}, "
                   f"used {config.format_bytes(self.used)} by {len(self._entries)} objects, "
                   f"requested {config.format_bytes(nbytes)}. Nothing stored was lost. "
                   f"Delete ObjectRefs you no longer need (objects are freed when no ref is "
                   f"alive), or start with a larger store: "
                   f"init(object_store_memory='{_suggest(self.used + nbytes)}')")
            raise ObjectStoreFullError(msg)
        self.used += nbytes

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
            self._discard(value)
            return []
        entry.value = value
        entry.contained = value.contained
        for inner in value.contained:
            self.pin(inner)
        if entry.refs <= 0 and entry.pins <= 0:
            return self._free(object_id)
        return []

    def value(self, object_id: str) -> Value | None:
        entry = self._entries.get(object_id)
        return entry.value if entry is not None else None

    def view(self, object_id: str) -> memoryview | None:
        """The cached read-only mapping of a shared value (made on first use)."""
        entry = self._entries[object_id]
        if isinstance(entry.value, SharedValue) and entry.view is None:
            entry.view = map_readonly(entry.value)
        return entry.view

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
        if entry.value is not None:
            self._discard(entry.value)
        entry.view = None
        freed = [object_id]
        for inner in entry.contained:
            freed.extend(self.unpin(inner))
        return freed

    def _discard(self, value: Value) -> None:
        self.release(value.nbytes)
        if isinstance(value, SharedValue):
            if value.arena and self._release_region is not None:
                self._release_region(value.segment, value.offset)
            else:
                self._unlink(value.segment)

    def stats(self) -> dict[str, int]:
        """Capacity, used bytes and object count (``object_count`` names it as the spec does)."""
        count = sum(1 for e in self._entries.values() if e.value is not None)
        return {"capacity": self.capacity, "used_bytes": self.used, "num_objects": count,
                "object_count": count}

    def clear(self) -> None:
        """Free everything (shutdown)."""
        for entry in self._entries.values():
            if entry.value is not None:
                self._discard(entry.value)
            entry.view = None
        self._entries.clear()
        self.used = 0


def _suggest(nbytes: int) -> str:
    gib = 1024**3
    return f"{max(1, -(-nbytes * 2 // gib))}GiB"
