"""Shutting down while other threads work: their calls fail clearly or run on a fresh
cluster, never on half of the old one; busy workers do not hold shutdown up."""

from __future__ import annotations

import threading
import time

import numpy as np

import distkernel as dk
from distkernel.api import runtime

MIB = 2**20


@dk.remote
def sleep(seconds):
    time.sleep(seconds)


def test_calls_during_shutdown_in_another_thread_fail_clearly_or_use_a_new_cluster():
    dk.init(2)
    first_cluster = runtime.cluster_info().cluster_id
    sleep.remote(30)  # a busy worker, so that shutdown takes a moment
    outcomes: list[tuple[str, str]] = []
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                ref = dk.put(np.arange(MIB))  # large: shared memory, the part that raced
                assert dk.get(ref)[-1] == MIB - 1
                info = runtime.cluster_info()
                outcomes.append(("ok", info.cluster_id if info else "?"))
            except dk.DistkernelError as error:  # clear: the cluster went away meanwhile
                outcomes.append(("clear error", type(error).__name__))
            except BaseException as error:  # noqa: BLE001 - what this test must not see
                outcomes.append(("raw error", repr(error)))

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.3)
    dk.shutdown()
    time.sleep(0.5)
    stop.set()
    worker.join(30)
    assert not [o for o in outcomes if o[0] == "raw error"], outcomes
    clusters = {cluster for kind, cluster in outcomes if kind == "ok"}
    assert first_cluster in clusters and len(clusters) == 2  # before, then a fresh one
    assert dk.get(dk.put(np.ones(MIB))).sum() == MIB


def test_shutdown_does_not_wait_for_running_tasks():
    dk.init(2)
    refs = [sleep.remote(30) for _ in range(2)]
    dk.wait(refs, timeout=0.5)  # both running
    started = time.monotonic()
    dk.shutdown()
    # It used to wait out a grace period per busy worker (3 s each) before killing it.
    assert time.monotonic() - started < 2.0


def test_shutdown_from_two_threads_at_once():
    dk.init(2)
    ref = dk.put(np.arange(MIB))
    threads = [threading.Thread(target=dk.shutdown) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not dk.is_initialized()
    try:
        dk.get(ref)
    except dk.ObjectLostError as error:
        assert "shut down" in str(error)
    else:
        raise AssertionError("a ref of a shut-down cluster gave a value")
