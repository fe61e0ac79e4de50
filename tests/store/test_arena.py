"""The arena allocator on its own: regions, holds, reuse, merging, dedicated chunks, trim."""

from __future__ import annotations

import os

import pytest

from distkernel.store.arena import MIN_CHUNK, PAGE, POPULATE_AT_LEAST, Arena
from distkernel.store.reaper import Space


@pytest.fixture
def space():
    made, lock = Space.create(os.getpid())
    yield made
    made.remove_all()
    os.close(lock)


@pytest.fixture
def arena(space):
    made = Arena(space, 4 * MIN_CHUNK, lambda name: os.unlink(space.segment_path(name)))
    yield made
    made.close()


def chunk_files(space: Space) -> set[str]:
    return {n for n in os.listdir(space.shm_dir) if space.owns(n)}


def test_regions_are_page_aligned_and_distinct(arena, space):
    first, second = arena.allocate(10), arena.allocate(PAGE + 1)
    assert first.offset % PAGE == 0 and second.offset % PAGE == 0
    assert first.chunk == second.chunk
    assert second.offset >= first.offset + PAGE
    assert chunk_files(space) == {first.chunk}


def test_chunks_have_their_space_reserved(arena, space):
    region = arena.allocate(PAGE)
    info = os.stat(space.segment_path(region.chunk))
    assert info.st_blocks * 512 >= info.st_size  # fallocate'd: no page left to fault in
    assert oct(info.st_mode & 0o777) == oct(0o600)


def test_region_is_reused_only_after_every_hold_is_released(arena):
    region = arena.allocate(3 * PAGE)
    arena.hold(region.chunk, region.offset)  # a view somewhere
    assert arena.holders(region.chunk, region.offset) == 2
    arena.release(region.chunk, region.offset)  # the store entry lets go
    other = arena.allocate(3 * PAGE)
    assert other.offset != region.offset
    arena.release(region.chunk, region.offset)  # the view goes
    again = arena.allocate(3 * PAGE)
    assert again.offset == region.offset


def test_free_neighbours_merge_into_one_large_region(arena):
    regions = [arena.allocate(PAGE) for _ in range(3)]
    for region in regions:
        arena.release(region.chunk, region.offset)
    big = arena.allocate(MIN_CHUNK)
    assert big.offset == 0 and arena.total == MIN_CHUNK


def test_a_value_beyond_the_limit_gets_a_dedicated_chunk_removed_when_freed(arena, space):
    big = arena.allocate(5 * MIN_CHUNK)
    assert big.size == 5 * MIN_CHUNK and big.offset == 0
    assert big.chunk in chunk_files(space)
    arena.release(big.chunk, big.offset)
    assert big.chunk not in chunk_files(space) and arena.total == 0


def test_trim_gives_back_wholly_free_chunks_only(arena, space):
    kept = arena.allocate(MIN_CHUNK)
    freed = arena.allocate(MIN_CHUNK)
    assert kept.chunk != freed.chunk
    arena.release(freed.chunk, freed.offset)
    assert arena.trim() == MIN_CHUNK
    assert chunk_files(space) == {kept.chunk}


def test_close_removes_chunks(arena, space):
    arena.allocate(PAGE)
    arena.close()
    assert chunk_files(space) == set()


def resident_bytes_of(space: Space, chunk: str) -> int:
    """How much of this process's mappings of a chunk file is resident (``/proc/self/smaps``)."""
    path, total, inside = space.segment_path(chunk), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def test_a_large_region_is_populated_before_the_first_copy_only(arena, space):
    size = 8 * POPULATE_AT_LEAST
    region = arena.allocate(size)
    view, populate = arena.view(region)
    assert populate is not None and view.nbytes == size
    assert resident_bytes_of(space, region.chunk) == 0  # no page touched by the mapping yet
    populate()
    if resident_bytes_of(space, region.chunk) == 0:
        view.release()
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux 5.14 and later)")
    assert resident_bytes_of(space, region.chunk) >= size
    view[:] = b"\1" * size
    view.release()
    arena.release(region.chunk, region.offset)
    again = arena.allocate(size)  # the same memory, written through the mapping before
    assert (again.chunk, again.offset) == (region.chunk, region.offset)
    view, populate = arena.view(again)
    assert populate is None and view[size - 1] == 1
    view.release()
    small = arena.allocate(POPULATE_AT_LEAST // 2)
    view, populate = arena.view(small)
    assert populate is None  # small: its pages fault in as the copy goes
    view.release()
