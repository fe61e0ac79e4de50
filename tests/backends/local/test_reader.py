"""The engine's socket reader (``backends.local.reader``) with real workers and sockets.

What a worker writes to its socket must reach the engine: results, printed output, a
message cut into pieces, one larger than the read buffer; and what goes wrong there must
not stop the reading: a worker that dies in the middle of a frame, one that sends a frame
that is not a message, one killed while idle. Tasks here write to their worker's socket
themselves (its descriptor is the worker's first argument) to play a misbehaving worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.core import config
from tests.conftest import wait_until

#: What the reader prints when handling one message failed (and it read on).
INTERNAL_ERROR = "internal error in the I/O thread"


class Output:
    """Task output as the engine hands it on, through the seam the notebook front uses
    (``route_output``). Reading pytest's capture while the I/O thread writes would race."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[tuple[int, str, str]] = []  # (worker id, stream, text)
        engine = runtime.current_engine()
        assert engine is not None, "start the cluster first"
        engine.route_output(None, self._write)

    def _write(self, worker_id: int, task_id: str, stream: str, text: str) -> None:
        with self._lock:
            self._received.append((worker_id, stream, text))

    def text(self, stream: str = "stdout") -> str:
        with self._lock:
            return "".join(text for _, name, text in self._received if name == stream)

    def workers(self) -> set[int]:
        with self._lock:
            return {worker_id for worker_id, _, _ in self._received}

    def wait_for(self, text: str, stream: str = "stdout") -> bool:
        return wait_until(lambda: text in self.text(stream))


@dk.remote
def square(x: int) -> int:
    return x * x


def pool_still_works() -> None:
    assert dk.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]


@pytest.mark.parametrize("spin", [0.0, 5.0], ids=["io-thread-reads", "caller-reads"])
def test_results_reach_a_waiting_caller_whoever_reads_the_sockets(monkeypatch, spin):
    """With no spin the I/O thread reads every result; with a long one the caller waiting
    in get reads them itself. Either way every result arrives, once, in place."""
    monkeypatch.setattr(config, "DRIVER_SPIN", spin)
    dk.init(2)

    @dk.remote
    def slow(value):
        time.sleep(0.3)  # longer than the reader's grace: whoever sleeps must be woken
        return value

    assert dk.get([square.remote(i) for i in range(300)], timeout=60) == \
        [i * i for i in range(300)]
    assert dk.get([slow.remote("late"), square.remote(7)], timeout=60) == ["late", 49]


def test_results_larger_than_the_read_buffer_arrive_whole(cluster):
    """Values under the inline threshold travel inside the result message, which is then
    larger than the reader's first buffer (64 KiB)."""
    size = config.INLINE_THRESHOLD - 4096

    @dk.remote
    def blob(i):
        return bytes([i]) * size

    values = dk.get([blob.remote(i) for i in range(40)], timeout=60)
    assert [(len(v), v[:1], v[-1:]) for v in values] == \
        [(size, bytes([i]), bytes([i])) for i in range(40)]


def test_task_output_reaches_the_driver_whole_and_in_order(cluster):
    @dk.remote
    def chatty(n):
        import sys

        for i in range(n):
            print(f"chatty line {i}")
        print("chatty to stderr", file=sys.stderr)
        return n

    output = Output()
    assert dk.get(chatty.remote(100), timeout=60) == 100
    assert output.wait_for("chatty line 99\n"), f"the last line never arrived:\n{output.text()}"
    assert output.wait_for("chatty to stderr\n", "stderr")
    assert output.text().splitlines() == [f"chatty line {i}" for i in range(100)]
    assert output.workers() and output.workers() <= {w["id"] for w in dk.status()["workers"]}


def test_output_and_results_of_many_workers_at_once_all_arrive_once():
    dk.init(4)

    @dk.remote
    def shout(i):
        print(f"shout {i} done")
        return i

    output = Output()
    assert dk.get([shout.remote(i) for i in range(200)], timeout=60) == list(range(200))
    expected = sorted(f"shout {i} done" for i in range(200))
    assert wait_until(lambda: len(output.text().splitlines()) >= 200), \
        f"some task output never arrived:\n{output.text()}"
    assert sorted(output.text().splitlines()) == expected


def test_a_message_that_arrives_a_byte_at_a_time_is_read_whole_and_once(cluster, capfd):
    @dk.remote
    def dribble():
        import os
        import pickle
        import sys
        import time

        from distkernel.core.protocol import Output
        from distkernel.core.wire import header

        payload = pickle.dumps(Output("dribbled", "stdout", "dribbled in whole\n"))
        frame = header(len(payload)) + payload
        socket_fd = int(sys.argv[1])
        for i in range(len(frame)):
            os.write(socket_fd, frame[i:i + 1])
            time.sleep(0.001)  # let the driver read each piece on its own
        return len(frame)

    output = Output()
    assert dk.get(dribble.remote(), timeout=60) > 4
    assert output.wait_for("dribbled in whole"), \
        f"the message sent a byte at a time never arrived:\n{output.text()}"
    pool_still_works()
    assert output.text().count("dribbled in whole") == 1
    assert INTERNAL_ERROR not in capfd.readouterr().err


def test_a_frame_that_is_not_a_message_is_reported_and_reading_goes_on(cluster, capfd):
    @dk.remote
    def garbage():
        import os
        import pickle
        import sys

        from distkernel.core.protocol import Output
        from distkernel.core.wire import header

        junk = b"this is not a pickle"
        sound = pickle.dumps(Output("garbage", "stdout", "sent with the garbage\n"))
        # One write: the driver reads both frames at once, and must not lose the second.
        os.write(int(sys.argv[1]), header(len(junk)) + junk + header(len(sound)) + sound)
        print("after the garbage")
        return "still here"

    output = Output()
    assert dk.get(garbage.remote(), timeout=60) == "still here"
    assert output.wait_for("after the garbage")
    # Frames are handled in the order they came: the report was printed before the output
    # that followed the garbage was handed on.
    assert INTERNAL_ERROR in capfd.readouterr().err
    assert output.text().splitlines() == ["sent with the garbage", "after the garbage"]
    pool_still_works()


# Half a frame, then the worker dies: a partial header, a header and part of its payload,
# and the long header form (frames over 2 GiB) cut short.
CUT_FRAMES = {
    "partial header": b"\x00\x00",
    "partial payload": (1000).to_bytes(4, "big") + b"x" * 10,
    "partial long header": b"\xff\xff\xff\xff\x00\x00",
}


@pytest.mark.parametrize("cut", list(CUT_FRAMES.values()), ids=list(CUT_FRAMES))
def test_a_worker_that_dies_mid_frame_fails_its_task_and_the_pool_goes_on(cluster, capfd, cut):
    @dk.remote(max_retries=0)
    def half_a_frame(piece):
        import os
        import signal
        import sys

        os.write(int(sys.argv[1]), piece)
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(dk.WorkerCrashedError, match="SIGKILL"):
        dk.get(half_a_frame.remote(cut), timeout=60)
    pool_still_works()
    assert INTERNAL_ERROR not in capfd.readouterr().err


def test_a_worker_killed_while_idle_is_noticed_and_replaced(cluster):
    assert wait_until(lambda: len(worker_pids()) == 2), "the pool never had two workers"
    victim = worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in worker_pids() and len(worker_pids()) == 2), \
        f"the killed worker {victim} was not replaced: {worker_pids()}"
    pool_still_works()


def test_a_worker_killed_while_the_caller_waits_wakes_the_caller(cluster):
    @dk.remote(max_retries=0)
    def victim():
        time.sleep(60)

    ref = victim.remote()
    assert wait_until(lambda: any(w["current_task"] for w in dk.status()["workers"])), \
        "victim() never showed up as running"
    pid = next(w["pid"] for w in dk.status()["workers"] if w["current_task"])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(dk.WorkerCrashedError, match="SIGKILL"):
        dk.get(ref, timeout=60)
    pool_still_works()


def worker_pids() -> list[int]:
    return [w["pid"] for w in dk.status()["workers"] if w["pid"] is not None]
