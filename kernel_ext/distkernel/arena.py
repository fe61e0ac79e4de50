"""The driver's arena: a few large shared-memory files, mapped once, carved into objects.

A fresh tmpfs file costs a page allocation and a zeroing per 4 KiB on its first
write (here about 0.4 s per GiB, half of it in the kernel) and as much again to
unlink. The arena pays that once: freed regions are reused, so a later ``put``
or a large task argument is a plain memcpy into memory that is already mapped
(about 0.1 s per GiB).

A region is reused only when nobody can still see it: it is held by its
store entry and by every live read-only view of it, in the driver (each ``get``
maps the region afresh and a finalizer on that mapping lets go) and in the
workers (which report their views the way they report ObjectRefs).

Chunks are named ``distkernel-<driver pid>-arena<n>``, mode 0600, and live
until shutdown: the store's memory, once used, stays with it (as in Ray).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from distkernel import config
from distkernel.object_store import segment_path

PAGE = mmap.ALLOCATIONGRANULARITY
MIN_CHUNK = 64 * 1024 * 1024


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
    mapping: mmap.mmap
    free: list[tuple[int, int]] = field(default_factory=list)  # (offset, size), by offset


class Arena:
    """First-fit allocator over page-aligned regions of a few chunk files.

    Not thread-safe: the engine calls it under its lock (copies into a region
    happen outside, through ``view``).
    """

    def __init__(self, driver_pid: int, limit: int) -> None:
        self._driver_pid = driver_pid
        self._limit = limit  # total chunk bytes; beyond it callers use one-off segments
        self._chunks: dict[str, _Chunk] = {}
        self._live: dict[tuple[str, int], list[int]] = {}  # (chunk, offset) -> [size, holds]
        self.total = 0

    def allocate(self, size: int) -> Region | None:
        """A free region of at least ``size`` bytes, or None when the arena may not grow."""
        size = _round_up(max(size, 1), PAGE)
        for chunk in self._chunks.values():
            region = self._take(chunk, size)
            if region is not None:
                return region
        chunk_size = max(MIN_CHUNK, size)
        if self.total + chunk_size > self._limit:
            return None
        chunk = self._new_chunk(chunk_size)
        return self._take(chunk, size)

    def view(self, region: Region) -> memoryview:
        """The writable bytes of a region, for the one copy in."""
        chunk = self._chunks[region.chunk]
        return memoryview(chunk.mapping)[region.offset:region.offset + region.size]

    def hold(self, chunk: str, offset: int) -> None:
        """One more holder of the live region at ``offset`` (a view taken somewhere)."""
        live = self._live.get((chunk, offset))
        if live is not None:
            live[1] += 1

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
        if owner is not None:
            self._give_back(owner, offset, live[0])

    def owns(self, chunk: str) -> bool:
        return chunk in self._chunks

    def close(self) -> None:
        """Unmap and unlink every chunk (shutdown); views already taken stay valid."""
        for chunk in self._chunks.values():
            try:
                chunk.mapping.close()
            except BufferError:  # a writer's view is still open: the GC will unmap it
                pass
            try:
                os.unlink(segment_path(chunk.name))
            except FileNotFoundError:
                pass
        self._chunks.clear()
        self._live.clear()
        self.total = 0

    # -- internals ---------------------------------------------------------------------------

    def _new_chunk(self, size: int) -> _Chunk:
        name = f"{config.SEGMENT_PREFIX}{self._driver_pid}-arena{len(self._chunks)}"
        path = segment_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        chunk = _Chunk(name, size, mapping, [(0, size)])
        self._chunks[name] = chunk
        self.total += size
        return chunk

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
