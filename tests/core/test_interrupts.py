"""Ctrl-C in the driver never loses a result, and still stops a waiting get.

A caller waiting in ``get`` reads the workers' sockets itself for a moment, so
a KeyboardInterrupt could land between reading a result and storing it. These
tests fire SIGINT at a driver many times a second while it submits and gets
small tasks, then check that every task it submitted still has its value.
They run the driver as a script: an interrupt that escaped would end pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import distkernel as dk
from tests.conftest import segments_left_by

STORM = """
import gc, os, signal, sys, threading, time
import distkernel as dk

dk.init(num_workers=2)

@dk.remote
def echo(x):
    return x

@dk.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n

counter = Counter.remote()
dk.get(counter.add.remote(0))
submitted, calls, interrupts = [], [], 0
stop = threading.Event()

def storm():
    while not stop.wait(0.0005):
        os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=storm, daemon=True).start()
deadline = time.monotonic() + float(sys.argv[1])  # at most; on a busy machine it takes longer
i = 0
while (i <= 150 or interrupts <= 150) and time.monotonic() < deadline:
    try:
        ref = echo.remote(i)
        submitted.append((i, ref))
        i += 1
        call = counter.add.remote(1)
        calls.append(call)
        dk.get([ref, call])
    except KeyboardInterrupt:
        interrupts += 1
stop.set()
try:
    time.sleep(0.05)  # the last SIGINT, if one was on its way, lands here
except KeyboardInterrupt:
    pass
values = dk.get([ref for _, ref in submitted], timeout=30)
assert values == [i for i, _ in submitted], "a result was lost or mixed up"
totals = dk.get(calls, timeout=30)  # a call whose ref an interrupt took still counts
assert all(b > a for a, b in zip(totals, totals[1:])), "actor calls ran out of order"
# Nothing leaks either: a ref an interrupt took before it was returned is freed.
del submitted, calls, ref, call, values, totals, counter
gc.collect()
deadline = time.monotonic() + 10
while dk.status()["object_store"]["num_objects"] and time.monotonic() < deadline:
    time.sleep(0.02)
left = dk.status()["object_store"]["num_objects"]
assert left == 0, f"{left} objects still stored with no ref to them"
print(f"ok {i} tasks, {interrupts} interrupts", flush=True)
dk.shutdown()
"""


def test_a_storm_of_ctrl_c_loses_no_result(tmp_path):
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    driver = subprocess.Popen([sys.executable, str(script), "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, out + err
    _, count, _, interrupts, _ = out.split()
    assert int(count) > 100 and int(interrupts) > 100, out
    assert not segments_left_by(driver.pid)


def test_ctrl_c_stops_a_get_that_waits_for_a_long_task():
    dk.init(num_workers=1)

    @dk.remote
    def slow():
        time.sleep(30)

    ref = slow.remote()
    main = os.getpid()
    timer = threading.Timer(0.3, os.kill, (main, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        dk.get(ref)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("get() returned although its task sleeps for 30 s")
    finally:
        timer.join()
    assert time.monotonic() - started < 5
    dk.cancel(ref, force=True)
    dk.shutdown()
