"""The arena allocator on its own: regions, holds, reuse and merging of free space."""

from __future__ import annotations

import os

import pytest

from distkernel import config
from distkernel.arena import MIN_CHUNK, PAGE, Arena


@pytest.fixture
def arena():
    made = Arena(os.getpid(), limit=4 * MIN_CHUNK)
    yield made
    made.close()


def test_regions_are_page_aligned_and_distinct(arena):
    first, second = arena.allocate(10), arena.allocate(PAGE + 1)
    assert first.offset % PAGE == 0 and second.offset % PAGE == 0
    assert first.chunk == second.chunk
    assert second.offset >= first.offset + PAGE
    assert os.path.exists(os.path.join(config.SHM_DIR, first.chunk))


def test_region_is_reused_only_after_every_hold_is_released(arena):
    region = arena.allocate(3 * PAGE)
    arena.hold(region.chunk, region.offset)  # a view somewhere
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
    assert big is not None and big.offset == 0 and arena.total == MIN_CHUNK


def test_large_object_gets_its_own_chunk_and_limit_is_kept(arena):
    big = arena.allocate(2 * MIN_CHUNK)
    assert big.size == 2 * MIN_CHUNK and arena.total == 2 * MIN_CHUNK
    assert arena.allocate(3 * MIN_CHUNK) is None  # over the limit: the caller falls back


def test_close_removes_chunks(arena):
    region = arena.allocate(PAGE)
    path = os.path.join(config.SHM_DIR, region.chunk)
    arena.close()
    assert not os.path.exists(path)
