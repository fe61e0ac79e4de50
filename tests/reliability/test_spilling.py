"""Spilling: a full store moves objects nobody reads to disk instead of refusing, keeps
every referenced object intact, and refuses only when the disk limit is reached."""

from __future__ import annotations

import gc
import os
import stat
import time

import numpy as np
import pytest

import distkernel as dk
from distkernel.api import runtime

MIB = 2**20


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    folder = tmp_path / "spill"
    folder.mkdir()
    monkeypatch.setenv("DISTKERNEL_SPILL_DIR", str(folder))
    return folder


def stats() -> dict:
    return dk.status()["object_store"]


def array(fill: float, mib: int = 8) -> np.ndarray:
    return np.full(mib * MIB // 8, fill)


def test_a_store_filled_past_capacity_keeps_every_referenced_object(spill_dir):
    dk.init(2, object_store_memory=64 * MIB)
    refs = [dk.put(array(float(i))) for i in range(14)]  # 112 MiB into 64
    assert stats()["spilled_bytes"] > 0 and stats()["used_bytes"] <= 64 * MIB

    @dk.remote
    def total(values):
        return float(values.sum())

    # Tasks read spilled objects in place; get reads them, or brings them back.
    sums = dk.get([total.remote(ref) for ref in refs])
    assert sums == [i * MIB for i in range(14)]
    for i, ref in enumerate(refs):
        value = dk.get(ref)
        assert value[0] == value[-1] == i
        del value


def test_the_spill_folder_is_private_and_goes_with_the_cluster(spill_dir):
    dk.init(1, object_store_memory=32 * MIB)
    refs = [dk.put(array(float(i))) for i in range(6)]
    folders = [p for p in spill_dir.iterdir() if p.name.startswith("distkernel-")]
    assert len(folders) == 1
    assert stat.S_IMODE(folders[0].stat().st_mode) == 0o700
    files = list(folders[0].iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    del refs
    dk.shutdown()
    assert list(spill_dir.iterdir()) == []


def test_objects_in_use_stay_in_memory_untouched(spill_dir):
    dk.init(1, object_store_memory=32 * MIB)
    kept = dk.get(dk.put(array(7.0)))  # an array over shared memory, still alive
    refs = [dk.put(array(float(i))) for i in range(10)]
    assert kept.min() == kept.max() == 7.0  # its region was neither spilled nor reused
    assert [dk.get(r)[0] for r in refs] == [float(i) for i in range(10)]


def test_when_everything_is_in_use_the_error_says_so(spill_dir):
    dk.init(1, object_store_memory=32 * MIB)
    refs = [dk.put(array(float(i), mib=10)) for i in range(3)]
    views = [dk.get(ref) for ref in refs]  # all 30 MiB stored are in use
    with pytest.raises(dk.ObjectStoreFullError, match="in use") as info:
        dk.put(array(9.0))
    assert "capacity 32.0 MiB" in str(info.value) and "Nothing stored was lost" in str(info.value)
    assert [v[0] for v in views] == [0.0, 1.0, 2.0]


def test_a_task_reading_its_argument_keeps_it_in_memory(spill_dir):
    dk.init(2, object_store_memory=32 * MIB)

    @dk.remote
    def slow_sum(values):
        time.sleep(0.5)  # meanwhile the driver fills the store
        return float(values.sum())

    ref = dk.put(array(3.0))
    result = slow_sum.remote(ref)
    del ref
    others = [dk.put(array(float(i))) for i in range(8)]
    assert dk.get(result) == 3.0 * MIB
    assert len(others) == 8


def test_the_spill_limit_bounds_the_disk(spill_dir, monkeypatch):
    monkeypatch.setenv("DISTKERNEL_SPILL_LIMIT", "20MiB")
    dk.init(1, object_store_memory=32 * MIB)
    refs = [dk.put(array(float(i))) for i in range(5)]  # 40 MiB: 16 of them on disk
    with pytest.raises(dk.ObjectStoreFullError, match="spill limit"):
        refs.extend(dk.put(array(9.0)) for _ in range(3))
    assert [dk.get(r)[0] for r in refs[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_spilled_object_comes_back_into_memory_when_there_is_room(spill_dir):
    dk.init(1, object_store_memory=32 * MIB)
    refs = [dk.put(array(float(i))) for i in range(6)]
    spilled = stats()["spilled_bytes"]
    assert spilled > 0
    del refs[1:]
    gc.collect()
    assert dk.get(refs[0])[0] == 0.0  # the oldest, spilled first, fits again
    assert stats()["spilled_bytes"] < spilled
    assert stats()["spilled_objects"] == 0


def test_a_spilled_object_is_freed_from_disk_with_its_last_ref(spill_dir):
    dk.init(1, object_store_memory=32 * MIB)
    refs = [dk.put(array(float(i))) for i in range(6)]
    folder = next(p for p in spill_dir.iterdir())
    assert list(folder.iterdir())
    del refs
    gc.collect()
    runtime.engine().memory.reclaimer.close()  # unlinks happen off the caller's thread
    assert list(folder.iterdir()) == []
    assert stats()["spilled_bytes"] == 0
    assert os.path.isdir(folder)
