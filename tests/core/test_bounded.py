"""BoundedDict: the tables kept about past tasks and cells forget their oldest entries."""

import copy
import pickle

import pytest

from distkernel.core.bounded import BoundedDict


def test_a_new_key_past_the_capacity_drops_the_oldest():
    kept: BoundedDict[str, int] = BoundedDict(3)
    for number, key in enumerate("abcde"):
        kept[key] = number
    assert list(kept.items()) == [("c", 2), ("d", 3), ("e", 4)]


def test_setdefault_counts_and_replacing_a_value_keeps_its_place():
    kept: BoundedDict[str, list[int]] = BoundedDict(2)
    kept.setdefault("a", []).append(1)
    kept.setdefault("b", []).append(2)
    kept["a"] = [3]  # replaced, not added: nothing dropped, "a" still the oldest
    assert list(kept) == ["a", "b"]
    kept.setdefault("c", []).append(4)
    assert dict(kept) == {"b": [2], "c": [4]}


def test_move_to_end_makes_a_key_the_newest():
    kept: BoundedDict[str, int] = BoundedDict(2)
    kept["a"], kept["b"] = 1, 2
    kept.move_to_end("a")
    kept["c"] = 3
    assert list(kept) == ["a", "c"]


def test_a_capacity_below_one_is_refused():
    with pytest.raises(ValueError, match="at least one entry"):
        BoundedDict(0)


def test_copies_and_pickles_keep_the_entries_and_the_capacity():
    kept: BoundedDict[str, int] = BoundedDict(2)
    kept["a"], kept["b"] = 1, 2
    for twin in (kept.copy(), copy.copy(kept), copy.deepcopy(kept),
                 pickle.loads(pickle.dumps(kept))):
        assert type(twin) is BoundedDict and twin.capacity == 2
        assert list(twin.items()) == [("a", 1), ("b", 2)]
        twin["c"] = 3
        assert list(twin) == ["b", "c"] and list(kept) == ["a", "b"]
