"""The driver's arena: a few large shared-memory files, carved into objects.

A fresh tmpfs page costs an allocation and a zeroing on its first write (here
about 0.4 s per GiB, half of it in the kernel) and as much again to unlink.
The arena pays that once: freed regions are reused, so a later ``put``, a large
task argument or a large result is a plain copy into memory that already
exists (about 0.1 s per GiB). Every large value lives in the arena, whoever
writes it: the driver allocates, workers write into what they were given.

Chunks are made with their space reserved (``fallocate``), so a full
shared-memory folder is an ``ENOSPC`` error when a chunk is made, never a
SIGBUS in whoever writes into it later. A value too large for the room left
under the limit gets a dedicated chunk of its own, removed when it is freed.
Wholly free chunks can be given back (``trim``) when the folder runs short.

The driver's first copy into a part of a chunk its mapping never held maps the pages
in one system call before the copy (``MADV_POPULATE_WRITE``, Linux 5.14 and later),
outside the engine's lock: a page fault each cost a fresh GiB about 0.45 s, the one
call about 0.25 s. A region written before through the mapping is copied into at once
(populating it again would walk its pages for nothing).

A region is reused only when nobody can still see it: it is held by its
store entry and by every live read-only view of it, in the driver (each
mapping has a finalizer that lets go) and in the workers (which report their
views the way they report ObjectRefs).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from distkernel.store.reaper import Space

PAGE = mmap.ALLOCATIONGRANULARITY
MIN_CHUNK = 64 * 1024 * 1024
#: Regions at least this large are populated before the driver's first copy into them.
POPULATE_AT_LEAST = 4 * 1024 * 1024
#: Linux's ``MADV_POPULATE_WRITE`` (Python names it from 3.12 on); None elsewhere.
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform == "linux" else None)


def _round_up(size: int, step: int) -> int:
    return -(-size // step) * step


@dataclass(frozen=True, slots=True)
class Region:
    chunk: str
    offset: int
    size: int


@dataclass(slots=True)
class _Chunk:
    name: str
    size: int
    dedicated: bool  # holds one value, removed when it is freed
    free: list[tuple[int, int]] = field(default_factory=list)  # (offset, size), by offset
    mapping: mmap.mmap | None = None  # the driver's writable mapping, made on first use
    written_up_to: int = 0  # the driver wrote through it below this offset, at most


class Arena:
    """First-fit allocator over page-aligned regions of a few chunk files.

    Not thread-safe: the engine calls it under its lock (copies into a region
    happen outside, through ``view`` in the driver or a write in a worker).
    ``remove`` unlinks a chunk file (on a thread of the store's: it takes time).
    """

    def __init__(self, space: Space, limit: int, remove: Callable[[str], None]) -> None:
        self._space = space
        self._limit = limit  # shared chunks beyond it are not made; dedicated ones are
        self._remove = remove
        self._chunks: dict[str, _Chunk] = {}
        self._live: dict[tuple[str, int], list[int]] = {}  # (chunk, offset) -> [size, holds]
        self.total = 0

    def allocate(self, size: int) -> Region:
        """A region of at least ``size`` bytes.

        Raises ``OSError(ENOSPC)`` when the shared-memory folder has no room for a
        new chunk; the caller can free some (spill, ``trim``) and ask again.
        """
        size = _round_up(max(size, 1), PAGE)
        for chunk in self._chunks.values():
            if not chunk.dedicated:
                region = self._take(chunk, size)
                if region is not None:
                    return region
        room = self._limit - self.total
        if size > room:
            return self._take(self._new_chunk(size, dedicated=True), size)  # type: ignore[return-value]
        chunk_size = max(size, min(MIN_CHUNK, _round_up(room, PAGE)))
        try:
            chunk = self._new_chunk(chunk_size, dedicated=False)
        except OSError:
            if chunk_size == size:
                raise
            chunk = self._new_chunk(size, dedicated=False)  # a short folder: just what is asked
        return self._take(chunk, size)  # type: ignore[return-value]

    def view(self, region: Region) -> tuple[memoryview, Callable[[], None] | None]:
        """The writable bytes of a region, for the driver's one copy in, and what to call
        before that copy, outside the lock, for a large region the driver's mapping never
        held (None: nothing to do)."""
        chunk = self._chunks[region.chunk]
        if chunk.mapping is None:
            fd = os.open(self._space.segment_path(chunk.name), os.O_RDWR | os.O_CLOEXEC)
            try:
                chunk.mapping = mmap.mmap(fd, chunk.size, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        end = region.offset + region.size
        populate = None
        if region.offset >= chunk.written_up_to and region.size >= POPULATE_AT_LEAST \
                and _POPULATE_WRITE is not None:
            populate = functools.partial(_populate, chunk.mapping, region.offset, region.size)
        chunk.written_up_to = max(chunk.written_up_to, end)
        return memoryview(chunk.mapping)[region.offset:end], populate

    def hold(self, chunk: str, offset: int) -> None:
        """One more holder of the live region at ``offset`` (a view taken somewhere)."""
        live = self._live.get((chunk, offset))
        if live is not None:
            live[1] += 1

    def holders(self, chunk: str, offset: int) -> int:
        """How many hold the region: its store entry and each view of it (0: not live)."""
        live = self._live.get((chunk, offset))
        return live[1] if live is not None else 0

    def release(self, chunk: str, offset: int) -> None:
        """Drop one hold; the last one returns the region to the free list."""
        live = self._live.get((chunk, offset))
        if live is None:
            return
        live[1] -= 1
        if live[1] > 0:
            return
        del self._live[(chunk, offset)]
        owner = self._chunks.get(chunk)
        if owner is None:
            return
        if owner.dedicated:
            self._drop(owner)
        else:
            self._give_back(owner, offset, live[0])

    def owns(self, chunk: str) -> bool:
        return chunk in self._chunks

    def trim(self) -> int:
        """Give wholly free chunks back to the system now (the folder is full and room is
        needed at once, so not through ``remove``); returns the bytes given back."""
        empty = [c for c in self._chunks.values()
                 if not c.dedicated and c.free == [(0, c.size)]]
        for chunk in empty:
            self._drop(chunk, now=True)
        return sum(c.size for c in empty)

    def close(self) -> None:
        """Unmap and unlink every chunk (shutdown); views already taken stay valid."""
        for chunk in list(self._chunks.values()):
            self._drop(chunk)
        self._live.clear()

    # -- internals ---------------------------------------------------------------------------

    def _new_chunk(self, size: int, *, dedicated: bool) -> _Chunk:
        name, fd = self._space.create_file(size)
        os.close(fd)
        chunk = _Chunk(name, size, dedicated, [(0, size)])
        self._chunks[name] = chunk
        self.total += size
        return chunk

    def _drop(self, chunk: _Chunk, *, now: bool = False) -> None:
        if chunk.mapping is not None:
            try:
                chunk.mapping.close()
            except BufferError:  # a writer's view is still open: the GC will unmap it
                pass
        del self._chunks[chunk.name]
        self.total -= chunk.size
        if now:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._space.segment_path(chunk.name))
        else:
            self._remove(chunk.name)

    def _take(self, chunk: _Chunk, size: int) -> Region | None:
        for index, (offset, free) in enumerate(chunk.free):
            if free < size:
                continue
            if free == size:
                del chunk.free[index]
            else:
                chunk.free[index] = (offset + size, free - size)
            self._live[(chunk.name, offset)] = [size, 1]  # held by its store entry
            return Region(chunk.name, offset, size)
        return None

    def _give_back(self, chunk: _Chunk, offset: int, size: int) -> None:
        """Insert and merge with free neighbours, so large regions form again."""
        spans = chunk.free
        index = 0
        while index < len(spans) and spans[index][0] < offset:
            index += 1
        spans.insert(index, (offset, size))
        if index + 1 < len(spans) and offset + size == spans[index + 1][0]:
            spans[index] = (offset, size + spans[index + 1][1])
            del spans[index + 1]
        if index > 0 and spans[index - 1][0] + spans[index - 1][1] == offset:
            spans[index - 1] = (spans[index - 1][0], spans[index - 1][1] + spans[index][1])
            del spans[index]


def _populate(mapping: mmap.mmap, offset: int, size: int) -> None:
    """Map a region's pages in one call; where the system cannot, the copy faults them in
    one by one as before."""
    try:
        mapping.madvise(_POPULATE_WRITE, offset, size)  # type: ignore[arg-type]
    except (OSError, ValueError):  # a kernel before 5.14 (EINVAL), or no room (EFAULT)
        pass
