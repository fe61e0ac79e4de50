"""The worker reads its own socket: cancel, revoke, threads, driver death, control block.

Workers have no reader thread; a busy one reads nothing until it needs a
message. These tests drive real worker processes through the cases that
design must get right: a cancel reaches a running task (and a stray SIGINT
does not), runs sent ahead are cancelled or taken back without ever running,
several threads of one task wait in ``get`` at once, the driver's death is
noticed mid-task, the driver never blocks on a busy worker's socket, and the
shared control page leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time

import psutil
import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.core import config, wire
from distkernel.engine import control
from tests.conftest import kill_driver_after_first_line, segments_left_by, wait_until


def work(path: str, tag: int, delay: float = 0.0, child_delay: float | None = None) -> int:
    """Append ``tag`` to a file (proof that it ran); optionally sleep, or wait for a child."""
    if delay:
        time.sleep(delay)
    if child_delay is not None:
        dk.get(nap.remote(child_delay))
    with open(path, "a") as handle:
        handle.write(f"{tag}\n")
    return tag


@dk.remote
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def ran(path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def scheduler():
    return runtime.current_engine().scheduler


def make_short(remote_work, path) -> None:
    """Run ``work`` quickly until its typical time (an average that the slow first run, which
    imports this module, starts high) is below PREFETCH_BELOW: the scheduler pipelines it."""
    for tag in range(30):
        assert dk.get(remote_work.remote(str(path), -1 - tag)) == -1 - tag


def prefetched() -> bool:
    """A worker was sent a second run while its first one runs."""
    with runtime.current_engine().lock:
        return any(len(w.assigned) == 2 for w in scheduler().workers.values())


def test_cancel_interrupts_a_running_task_but_a_stray_sigint_does_not():
    dk.init(1)

    @dk.remote(max_retries=0)
    def spin(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # pure Python: SIGINT lands between bytecodes
            pass
        return "done"

    ref = spin.remote(1.0)
    assert wait_until(lambda: dk.status()["workers"][0]["current_task"])
    os.kill(dk.status()["workers"][0]["pid"], signal.SIGINT)  # like Jupyter's process group
    assert dk.get(ref) == "done"

    ref = spin.remote(30)
    assert wait_until(lambda: dk.status()["workers"][0]["current_task"])
    started = time.monotonic()
    dk.cancel(ref)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(ref, timeout=10)
    assert time.monotonic() - started < 5
    assert dk.get(spin.remote(0)) == "done"  # the same worker goes on


def test_cancel_of_a_sent_but_not_started_run_reports_it_and_never_runs_it(tmp_path):
    dk.init(1)
    remote_work = dk.remote(max_retries=0)(work)
    path = tmp_path / "ran"
    make_short(remote_work, path)
    running = remote_work.remote(str(path), 100, 1.0)  # typed short, so one more is sent along
    queued = remote_work.remote(str(path), 101)
    assert wait_until(prefetched), "the second run was not pipelined onto the worker"
    dk.cancel(queued)  # marked in the control page + SIGINT, which the running one ignores
    after = remote_work.remote(str(path), 102)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(queued, timeout=10)
    assert dk.get([running, after], timeout=10) == [100, 102]
    assert 101 not in ran(path)
    assert [r.status for r in dk.timeline()[-3:]] == ["finished", "cancelled", "finished"]


def test_a_run_taken_back_from_a_blocked_worker_runs_once_elsewhere(tmp_path):
    dk.init(1)
    remote_work = dk.remote(max_retries=0)(work)
    path = tmp_path / "ran"
    make_short(remote_work, path)
    # The parent is typed short, so 201 is sent along; then the parent blocks in get, the
    # scheduler takes 201 back (revoke) and an extra worker runs it.
    parent = remote_work.remote(str(path), 200, 0.3, child_delay=0.2)
    queued = remote_work.remote(str(path), 201)
    assert wait_until(prefetched), "the second run was not pipelined onto the worker"
    assert dk.get([parent, queued], timeout=20) == [200, 201]
    time.sleep(0.3)  # had the revoked copy run, it would have written by now
    assert sorted(t for t in ran(path) if t > 0) == [200, 201]


def test_get_from_several_threads_of_one_task():
    dk.init(2)

    @dk.remote
    def fan_out():
        results = {}

        def fetch(name, seconds):
            results[name] = dk.get(nap.remote(seconds))

        threads = [threading.Thread(target=fetch, args=(f"t{i}", 0.05 * i)) for i in range(4)]
        for thread in threads:
            thread.start()
        mine = dk.get(nap.remote(0.12))  # the main thread waits too
        try:
            dk.get(nap.remote(0.5), timeout=0.05)
        except dk.GetTimeoutError:
            timed_out = True
        for thread in threads:
            thread.join()
        return sorted(results.items()), mine, timed_out

    results, mine, timed_out = dk.get(fan_out.remote(), timeout=30)
    assert results == [(f"t{i}", 0.05 * i) for i in range(4)]
    assert mine == 0.12 and timed_out


def test_a_cancel_while_the_task_waits_in_get_leaves_the_worker_usable():
    dk.init(1)

    @dk.remote(max_retries=0)
    def waits():
        return dk.get(nap.remote(1))

    ref = waits.remote()
    assert wait_until(lambda: len(dk.status()["workers"]) == 2)  # blocked: an extra started
    dk.cancel(ref)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(ref, timeout=10)
    assert dk.get(nap.remote(0)) == 0


def test_the_driver_never_blocks_on_a_busy_workers_socket():
    dk.init(1)

    @dk.remote
    class Sink:
        def __init__(self):
            self.seen = 0

        def hold(self, seconds):
            time.sleep(seconds)

        def take(self, blob):
            self.seen += len(blob)
            return self.seen

    sink = Sink.remote()
    dk.get(sink.take.remote(b""))
    hold = sink.hold.remote(1.5)
    blob = b"x" * 90_000  # inline: every call carries it, ~18 MB in all
    started = time.monotonic()
    calls = [sink.take.remote(blob) for _ in range(200)]
    assert time.monotonic() - started < 1.0, "submitting blocked on the actor's socket"
    assert dk.get(nap.remote(0), timeout=1.0) == 0  # the rest of the engine is not held up
    dk.get(hold)
    assert dk.get(calls[-1], timeout=30) == 200 * len(blob)


DRIVER = textwrap.dedent("""
    import time
    import numpy as np
    import distkernel as dk
    dk.init(1)
    ref = dk.put(np.ones(1_000_000))
    @dk.remote
    def compute():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # busy in Python, never reading its socket
            pass
    pending = compute.remote()
    while not dk.status()["workers"][0]["current_task"]:
        time.sleep(0.01)
    print(dk.status()["workers"][0]["pid"], flush=True)
    time.sleep(60)
""")


def test_driver_death_during_a_long_task_removes_worker_and_segments(tmp_path):
    driver_pid, line = kill_driver_after_first_line(tmp_path, DRIVER)
    worker_pid = int(line)

    def all_gone():
        return not psutil.pid_exists(worker_pid) and not segments_left_by(driver_pid)

    assert wait_until(all_gone, timeout=5)


def test_replaced_and_stopped_workers_leave_no_control_page_behind():
    dk.init(2)
    me = psutil.Process()
    fds_before = me.num_fds()
    for _ in range(3):
        ref = nap.remote(30)
        assert wait_until(lambda: any(w["current_task"] for w in dk.status()["workers"]))
        dk.cancel(ref, force=True)  # kills the worker; the pool replaces it
        with pytest.raises(dk.TaskCancelledError):
            dk.get(ref, timeout=10)
    assert wait_until(lambda: len(dk.status()["workers"]) == 2
                      and all(w["state"] == "idle" for w in dk.status()["workers"]))
    assert me.num_fds() <= fds_before  # each replaced worker's socket and page are closed
    assert not [n for n in os.listdir(config.SHM_DIR) if "ctl" in n]
    dk.shutdown()
    assert not [n for n in os.listdir(config.SHM_DIR) if "ctl" in n]


# --- the control page, without processes -------------------------------------------------------

@pytest.fixture
def page():
    block = control.ControlBlock()
    view = control.ControlView(os.dup(block.fd))
    block.close_fd()
    # The view's mapping holds a descriptor of the page until the view is freed (a worker's
    # lasts as long as the process): the list lets teardown drop the last reference to it.
    pair = [block, view]
    del view
    yield pair
    pair.clear()
    block.close()


def test_marks_reach_the_worker_once_and_in_order(page):
    block, view = page
    assert view.take(1) == 0
    block.revoke((3, 4))
    block.cancel(5)
    block.cancel(5)  # a second cancel() of the same run takes no second slot
    assert view.cancelled(5) and not view.cancelled(4)
    assert [view.take(s) for s in (2, 3, 5)] == [0, control.REVOKED, control.CANCELLED]
    assert view.take(4) == 0  # runs arrive in seq order: 4 was passed, its mark forgotten


def test_the_ring_keeps_the_latest_marks_when_it_wraps(page):
    block, view = page
    for seq in range(1, 3 * control.RING):
        block.revoke((seq,))
        assert view.take(seq) == control.REVOKED
    block.cancel(10 * control.RING)
    assert view.cancelled(10 * control.RING)


def test_a_page_the_worker_lost_count_of_says_so(page, capfd):
    block, view = page
    block.revoke(tuple(range(1, control.RING + 11)))
    assert view.take(control.RING + 10) == control.REVOKED  # the newest marks are all there
    assert "10 cancel/revoke marks lost" in capfd.readouterr().err


def test_the_outbox_never_blocks_and_keeps_frames_whole_and_in_order():
    sender, receiver = socket.socketpair()
    outbox = wire.Outbox(sender)
    payloads = [bytes([i % 251]) * (50_000 + i) for i in range(200)]  # ~10 MB, never read yet
    started = time.monotonic()
    for payload in payloads:
        outbox.send(payload)
    assert time.monotonic() - started < 2.0
    reader, frames = wire.FrameReader(receiver.fileno()), []
    while len(frames) < len(payloads):
        frames.extend(reader.read())
    assert frames == payloads
    outbox.close()
    receiver.close()
