"""The API through Ray Client: ``init(address="ray://host:port")`` from a driver whose
tasks' workers cannot reach it, so their reports come back as results (``runner``).
Joins the Ray cluster of this package's Ray half, from a driver script of its own."""

from __future__ import annotations

import pytest

from tests.backends.ray.scripts import CELLS
from tests.conftest import run_driver_script

CLIENT = """
import threading
import time
import numpy as np
import distkernel as dk
from distkernel.api import runtime

for attempt in range(3):   # Ray's server for this client may fail to start: tried again
    try:
        info = dk.init(address=ADDRESS)
        break
    except dk.DistkernelError as error:
        if "Initialization failure from server" not in str(error) or attempt == 2:
            raise
        time.sleep(2)
assert info.backend == "ray", info
engine = runtime.current_engine()
follow_cells(engine)   # what the notebook front does with task output (scripts.CELLS)

@dk.remote
def square(x):
    print("square", x)
    return x * x

@dk.remote
def fail():
    raise ValueError("bad input")

@dk.remote
def nap(seconds):
    for _ in range(int(seconds * 10)):   # Ray interrupts a task between bytecodes
        time.sleep(0.1)
    print("napped", seconds)
    return seconds

@dk.remote
def leaves_early():
    done = dk.get(square.remote(3))   # ends first: its record comes in this one's report
    nap.remote(1.5)   # still running when this one has ended
    return done

@dk.remote
def fails_late():
    dk.get(square.remote(5))   # its record comes with the error
    raise KeyError("late")

@dk.remote
def fails_early(seconds):
    nap.remote(seconds)   # still running when this one has raised
    raise KeyError("early")

@dk.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n

assert dk.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
arr = np.arange(1_000_000, dtype=np.float64)
assert np.array_equal(dk.get(dk.put(arr)), arr)
try:
    dk.get(fail.remote())
except ValueError as error:
    assert isinstance(error, dk.TaskError) and "bad input" in str(error), error
else:
    raise AssertionError("no error")
counter = Counter.remote()
assert dk.get([counter.add.remote(1) for _ in range(3)]) == [1, 2, 3]
try:
    dk.put(threading.Lock())
except dk.SerializationError as error:
    assert "_thread.lock" in str(error), error
else:
    raise AssertionError("a lock travelled")
slow = nap.remote(30)
time.sleep(1)
dk.cancel(slow)
all_cancelled([slow])   # (scripts.CELLS)
first = {r.name: r.status for r in settled("In [1]", 10)}
assert first == {"square": "finished", "fail": "failed", "Counter": "finished",
                 "Counter.add": "finished", "nap": "cancelled"}, first
assert output_of("In [1]", 4) == [f"square {i}\\n" for i in range(4)], written

cell[0] = "In [2]"   # a task submitted inside a task, still running when its parent ends
assert dk.get(leaves_early.remote()) == 9
cell[0] = "In [3]"
second = {r.name: r for r in settled("In [2]", 3)}
assert sorted(second) == ["leaves_early", "nap", "square"], second
assert all(r.status == "finished" and r.worker_id == 1 for r in second.values()), second
assert second["nap"].finished > second["leaves_early"].finished, second
assert output_of("In [2]", 2) == ["napped 1.5\\n", "square 3\\n"], written
try:
    dk.get(fails_late.remote())
except KeyError:
    pass
else:
    raise AssertionError("no error")
third = {r.name: r.status for r in settled("In [3]", 2)}
assert third == {"fails_late": "failed", "square": "finished"}, third
assert output_of("In [3]", 1) == ["square 5\\n"], written

cell[0] = "In [4]"   # ... and still running when a parent that raised ends
try:
    dk.get(fails_early.remote(1.5))
except KeyError:
    pass
else:
    raise AssertionError("no error")
cell[0] = "In [5]"
fourth = {r.name: r for r in settled("In [4]", 2)}
assert fourth["fails_early"].status == "failed" and fourth["nap"].status == "finished", fourth
assert fourth["nap"].finished > fourth["fails_early"].finished, fourth
assert output_of("In [4]", 1) == ["napped 1.5\\n"], written
try:   # such a task is cancelled with its cell, as any other
    dk.get(fails_early.remote(30))
except KeyError:
    pass
_deadline = time.monotonic() + 30
while not [r for r in engine.timeline(cell="In [5]") if r.name == "nap"]:
    assert time.monotonic() < _deadline, engine.timeline(cell="In [5]")
    time.sleep(0.1)
assert len(engine.cancel_cell("In [5]")) == 1
fifth = {r.name: r.status for r in settled("In [5]", 2)}
assert fifth == {"fails_early": "failed", "nap": "cancelled"}, fifth
dk.shutdown()
print("client ok")
"""


def test_the_api_and_the_records_through_ray_client(engine, request, tmp_path):
    """Tasks, actors, put / get, errors, cancel, and each task's record and output in the
    cell that submitted it, also for a task submitted inside a task that ends after it,
    whether that task returned or raised (and then it is cancelled with its cell too)."""
    if engine == "local":
        pytest.skip("Ray Client is Ray's")
    ray_cluster = request.getfixturevalue("ray_cluster")  # (the Ray half's, started by now)
    if ray_cluster.client_address is None:
        pytest.skip("Ray Client needs grpcio: pip install 'distkernel[ray]'")
    script = CELLS + CLIENT.replace("ADDRESS", repr(ray_cluster.client_address))
    done = run_driver_script(tmp_path, script, timeout=240)
    assert "client ok" in done.stdout
