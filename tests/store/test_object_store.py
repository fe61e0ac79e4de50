"""The object store through real shared memory: zero-copy, identity, lifetime, capacity."""

from __future__ import annotations

import gc
import os
import stat

import numpy as np
import pytest

import distkernel as dk
from distkernel.core import config
from tests.conftest import our_segments, wait_until


def store_stats():
    return dk.status()["object_store"]


def test_small_values_inline_large_in_shared_memory(cluster):
    small = dk.put(list(range(100)))
    assert dk.get(small) == list(range(100))
    assert our_segments() == []
    big = dk.put(np.arange(1_000_000))
    segments = our_segments()
    assert len(segments) == 1
    path = os.path.join(config.SHM_DIR, segments[0])
    assert segments[0].startswith(f"distkernel-{os.getpid()}-")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    del big


def test_worker_results_are_written_into_the_drivers_arena(cluster):
    @dk.remote
    def make(fill):
        return np.full(1_000_000, fill)

    assert dk.get(make.remote(0))[0] == 0
    segments = set(our_segments())
    assert segments  # the result went to shared memory the driver made
    for name in segments:
        mode = os.stat(os.path.join(config.SHM_DIR, name)).st_mode
        assert stat.S_IMODE(mode) == 0o600
    for fill in range(1, 6):  # later results reuse that memory: no file per result
        assert dk.get(make.remote(fill))[-1] == fill
    assert set(our_segments()) == segments


@pytest.mark.parametrize("make", [
    lambda: np.arange(2_000_000, dtype=np.float64),
    lambda: np.asfortranarray(np.arange(1_000_000, dtype=np.int32).reshape(1000, 1000)),
    lambda: np.zeros((300, 300, 3), dtype=np.uint8),
    lambda: np.array([1.5] * 20_000, dtype=np.complex128),
    lambda: np.ones(200_000, dtype=[("a", "i4"), ("b", "f8")]),
])
def test_get_of_large_array_is_readonly_zero_copy_view(cluster, make):
    original = make()
    ref = dk.put(original)
    value = dk.get(ref)
    np.testing.assert_array_equal(value, original)
    assert value.dtype == original.dtype and value.shape == original.shape
    assert value.flags.writeable is False
    assert not value.flags.owndata  # a view into the shared mapping, not a copy
    with pytest.raises(ValueError):
        value[(0,) * value.ndim] = 1


def test_zero_d_and_small_arrays_roundtrip(cluster):
    for array in (np.float64(3.5), np.array(7), np.arange(5)):
        np.testing.assert_array_equal(dk.get(dk.put(array)), array)


def test_workers_get_readonly_views_too(cluster):
    ref = dk.put(np.arange(1_000_000))

    @dk.remote
    def check(arr):
        return arr.flags.writeable, arr.flags.owndata, int(arr[-1])

    assert dk.get(check.remote(ref)) == (False, False, 999_999)


def test_identity_inside_one_object_is_kept(cluster):
    obj = [np.zeros(42)] * 99
    values = dk.get(dk.put(obj))
    assert values[0] is values[1]
    big = [np.zeros(100_000)] * 10
    values = dk.get(dk.put(big))
    assert all(v is values[0] for v in values)


def test_put_copies_now(cluster):
    data = {"a": [1, 2]}
    arr = np.zeros(1_000_000)
    ref, aref = dk.put(data), dk.put(arr)
    data["a"].append(3)
    arr[0] = 99
    assert dk.get(ref) == {"a": [1, 2]}
    assert dk.get(aref)[0] == 0


def test_object_freed_when_last_ref_dies(cluster):
    ref = dk.put(np.ones(1_000_000))
    used = store_stats()["used_bytes"]
    assert used >= 8_000_000
    view = dk.get(ref)
    del ref
    gc.collect()
    assert store_stats()["used_bytes"] <= used - 8_000_000
    assert store_stats()["num_objects"] == 0
    assert view.sum() == 1_000_000  # a view taken earlier stays valid after the free


def test_memory_of_freed_objects_is_reused_only_when_no_view_is_left(cluster):
    first = dk.put(np.full(1_000_000, 1.0))
    kept_view = dk.get(first)
    del first
    gc.collect()
    second = dk.put(np.full(1_000_000, 2.0))  # must not land on the region still viewed
    assert kept_view.min() == 1.0 and kept_view.max() == 1.0
    del kept_view, second
    gc.collect()
    segments = set(our_segments())
    for value in (3.0, 4.0, 5.0):
        ref = dk.put(np.full(1_000_000, value))
        assert dk.get(ref)[0] == value
        del ref
        gc.collect()
    assert set(our_segments()) == segments  # freed regions were reused, nothing new made


def test_views_held_in_workers_keep_their_region(cluster):
    @dk.remote
    class Keeper:
        def keep(self, arr):
            self.arr = arr
            return float(arr[0])

        def check(self):
            return float(self.arr.min()), float(self.arr.max())

    keeper = Keeper.remote()
    ref = dk.put(np.full(1_000_000, 7.0))
    assert dk.get(keeper.keep.remote(ref)) == 7.0
    del ref
    gc.collect()
    others = [dk.put(np.full(1_000_000, 9.0)) for _ in range(3)]
    assert dk.get(keeper.check.remote()) == (7.0, 7.0)
    del others


def test_task_keeps_its_arguments_alive(cluster):
    @dk.remote
    def total(arr):
        import time

        time.sleep(0.3)
        return float(arr.sum())

    ref = dk.put(np.ones(500_000))
    result = total.remote(ref)
    del ref
    gc.collect()
    assert dk.get(result) == 500_000.0
    assert wait_until(lambda: store_stats()["used_bytes"] < 100_000, timeout=5)


def test_large_argument_goes_through_the_store_once(cluster):
    @dk.remote
    def shape(arr):
        return arr.shape, arr.flags.writeable

    arr = np.ones((1000, 1000))
    assert dk.get(shape.remote(arr)) == ((1000, 1000), False)
    assert wait_until(lambda: store_stats()["used_bytes"] == 0, timeout=5)  # freed after it


def test_large_results_come_back_zero_copy(cluster):
    @dk.remote
    def make(n):
        return np.arange(n)

    value = dk.get(make.remote(3_000_000))
    assert value[-1] == 2_999_999 and value.flags.writeable is False


def test_store_full_raises_with_numbers_and_keeps_what_is_stored(monkeypatch):
    monkeypatch.setenv("DISTKERNEL_SPILL_LIMIT", "0")  # no spilling: the store must refuse
    dk.init(2, object_store_memory=8 * 1024 * 1024)
    first = dk.put(np.ones(600_000))  # 4.8 MB of 8 MiB
    with pytest.raises(dk.ObjectStoreFullError) as info:
        dk.put(np.ones(600_000))
    message = str(info.value)
    assert "capacity 8.0 MiB" in message and "used" in message and "requested" in message
    assert isinstance(info.value, MemoryError)
    assert dk.get(first).sum() == 600_000  # nothing already stored was lost
    del first
    gc.collect()
    again = dk.put(np.ones(600_000))  # room again once the old object is freed
    assert dk.get(again)[0] == 1


def test_store_full_for_task_result_fails_that_task_only(small_store):
    @dk.remote
    def make():
        return np.ones(2_000_000)  # 16 MB, over the 8 MiB capacity

    with pytest.raises(dk.ObjectStoreFullError):
        dk.get(make.remote())
    assert our_segments() == []
    assert dk.get(dk.put(5)) == 5


def test_ref_from_shut_down_cluster_is_lost():
    dk.init(1)
    ref = dk.put(np.ones(10))
    dk.shutdown()
    dk.init(1)
    with pytest.raises(dk.ObjectLostError, match="shut down or restarted"):
        dk.get(ref)


def test_refs_inside_stored_objects_keep_their_targets_alive(cluster):
    inner = dk.put(np.arange(200_000))
    outer = dk.put({"payload": inner})
    del inner
    gc.collect()
    payload = dk.get(outer)["payload"]
    assert dk.get(payload)[-1] == 199_999


def test_leftover_segments_of_dead_drivers_are_swept():
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    path = os.path.join(config.SHM_DIR, f"distkernel-{dead_pid}-leftover")
    with open(path, "wb") as handle:
        handle.write(b"x")
    dk.init(1)
    assert not os.path.exists(path)
