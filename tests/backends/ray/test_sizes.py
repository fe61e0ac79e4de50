"""The sizes a task's record gets on Ray (``sizes.size_of``): estimated without pickling,
and bounded in work however deep and wide the value is (it runs for every call)."""

from __future__ import annotations

import sys

import numpy as np

from distkernel.backends.ray.sizes import SIZED_ITEMS, size_of


def test_buffers_count_exactly_and_containers_by_their_items():
    assert size_of(np.ones(1000)) == 8000
    value = {"a": b"xy", "b": [np.zeros(10, dtype=np.uint8), "abc"]}
    assert size_of(value) == 1 + 2 + 1 + 10 + 3  # keys, bytes, array, string
    assert size_of(((np.ones(5),), {})) == 40


def test_a_huge_nested_value_is_looked_at_only_so_far():
    inner = [np.ones(1, dtype=np.uint8)] * 1000
    huge = [[inner] * 1000] * 1000  # a billion leaves
    assert 0 < size_of(huge) <= SIZED_ITEMS


def test_numbers_and_empty_containers_are_told_by_their_type():
    assert size_of(()) == size_of({}) == size_of([]) == 0
    numbers = (1, 2.5, None, True, 3j)
    assert size_of(numbers) == sum(sys.getsizeof(n) for n in numbers)
    assert size_of(np.float64(2)) == 8  # a numpy number by its buffer, not as a float
    assert size_of((np.ones(0),)) == 0
