"""The Ray engine, on a real Ray started by init(address="ray"), in a driver script of
its own (Ray changes the process it runs in): the API's calls and errors as on the local
engine, and nothing left running after shutdown()."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import run_driver_script

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'distkernel[ray]')")

SCRIPT = """
import time
import numpy as np
import psutil
import distkernel as dk

info = dk.init(address="ray", num_cpus=2)
assert info.backend == "ray", info
status = dk.status()
assert status["backend"] == "ray" and status["num_workers"] == 2, status

@dk.remote
def square(x):
    return x * x

@dk.remote(num_returns=2)
def pair(x):
    return x, -x

@dk.remote
def total(arr):
    return float(arr.sum())

@dk.remote
def fail(kind):
    raise ValueError(f"bad {kind}")

@dk.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds

assert dk.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
a, b = pair.remote(3)
assert dk.get([a, b]) == [3, -3]
arr = np.arange(1_000_000, dtype=np.float64)
stored = dk.put(arr)
assert dk.get(total.remote(stored)) == float(arr.sum())   # a ref as argument
assert np.array_equal(dk.get(stored), arr)

ready, not_ready = dk.wait([nap.remote(0.01), nap.remote(5)], num_returns=1, timeout=3)
assert len(ready) == 1 and len(not_ready) == 1

try:
    dk.get(fail.remote("input"))
except ValueError as error:   # the original class ...
    assert isinstance(error, dk.TaskError), type(error)   # ... and ours
    assert "bad input" in str(error) and "fail" in error.remote_traceback
else:
    raise AssertionError("no error")

try:
    dk.get(nap.remote(5), timeout=0.2)
except dk.GetTimeoutError:
    pass
else:
    raise AssertionError("no timeout")

slow = nap.remote(30)
time.sleep(0.5)
dk.cancel(slow)
try:
    dk.get(slow, timeout=20)
except dk.TaskCancelledError:
    pass
else:
    raise AssertionError("not cancelled")

@dk.remote
class Counter:
    def __init__(self, start):
        self.n = start
    def add(self, k):
        self.n += k
        return self.n

counter = Counter.remote(10)
assert dk.get([counter.add.remote(1) for _ in range(3)]) == [11, 12, 13]
dk.kill(counter)
try:
    dk.get(counter.add.remote(1), timeout=20)
except dk.ActorDiedError:
    pass
else:
    raise AssertionError("the killed actor answered")

from distkernel.api import runtime
try:
    runtime.engine().resize(4)
except dk.DistkernelError as error:
    assert "Ray" in str(error)
else:
    raise AssertionError("a Ray cluster was resized")

dk.shutdown()
deadline = time.monotonic() + 20
while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
    time.sleep(0.2)
left = [p.name() for p in psutil.Process().children(recursive=True)]
assert not left, f"still running after shutdown: {left}"
print("ray engine ok")
"""


def test_the_api_on_a_ray_of_its_own(tmp_path):
    done = run_driver_script(tmp_path, SCRIPT, timeout=240)
    assert "ray engine ok" in done.stdout
