"""The process pool on its own: real worker processes started, stopped and killed by
``backends.local.pool``, with no engine around them.

The test plays the driver: it reads what a worker sends over its socket with the pool's
``FrameReader``, tells it to stop through the pool's ``Outbox``, and checks how the
process ended. A worker's files live in a ``Space`` of the test's own.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys

import psutil
import pytest

from distkernel.backends.local import pool
from distkernel.core.exceptions import describe_exit
from distkernel.core.protocol import Stop, WorkerReady
from distkernel.store.reaper import Space
from tests.conftest import process_alive, wait_until

#: No serializer registered: the worker keeps its default registry.
NO_REGISTRY = b""


@pytest.fixture
def space():
    """The files of a cluster of the test's own (its lock held while the test runs)."""
    created, lock = Space.create(os.getpid())
    yield created
    created.remove_all()
    os.close(lock)


@pytest.fixture
def started(space):
    """Start workers with the pool; whatever the test leaves running is killed and reaped."""
    workers: list[pool.WorkerProcess] = []

    def start(worker_id: int = 1, **kwargs) -> pool.WorkerProcess:
        worker = pool.start_worker(worker_id, space, "test-cluster", NO_REGISTRY, **kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        pool.kill(worker)
    pool.stop_all(workers, timeout=10)


def next_message(worker: pool.WorkerProcess, timeout: float = 30) -> object:
    """The first message the worker sends (the test reads it as the I/O thread would)."""
    readable, _, _ = select.select([worker.conn.fileno()], [], [], timeout)
    assert readable, f"worker {worker.pid} sent nothing within {timeout} s"
    frames = worker.reader.read()
    while not frames:  # a frame larger than one read: keep reading until it is whole
        frames = worker.reader.read()
    return pickle.loads(frames[0])


def test_a_started_worker_announces_itself_and_exits_cleanly_when_told_to_stop(started):
    worker = started()
    ready = next_message(worker)
    assert isinstance(ready, WorkerReady), ready
    worker.send(Stop())
    assert worker.exit_code(timeout=30) == 0
    worker.close()
    assert not process_alive(worker.pid)


def test_a_worker_runs_in_a_session_of_its_own(started):
    """Jupyter's interrupt and ipykernel's shutdown signal the kernel's process group:
    workers must not hear them."""
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    assert os.getsid(worker.pid) == worker.pid
    assert os.getpgid(worker.pid) != os.getpgid(0)


def test_a_worker_gets_its_environment_and_working_directory(started, tmp_path):
    worker = started(extra_env={"DISTKERNEL_TEST_MARK": "pool"}, working_dir=str(tmp_path))
    assert isinstance(next_message(worker), WorkerReady)
    process = psutil.Process(worker.pid)
    assert process.cwd() == str(tmp_path)
    assert process.environ().get("DISTKERNEL_TEST_MARK") == "pool"
    assert process.environ().get("PYTHONUNBUFFERED") == "1"


def test_a_runtime_env_that_sets_pythonunbuffered_still_starts_workers(started):
    """``init(runtime_env={"env_vars": {"PYTHONUNBUFFERED": ...}})`` once made every
    worker start fail with a TypeError; the worker's own setting wins."""
    worker = started(extra_env={"PYTHONUNBUFFERED": "0"})
    assert isinstance(next_message(worker), WorkerReady)
    assert psutil.Process(worker.pid).environ()["PYTHONUNBUFFERED"] == "1"


def test_the_sentinel_and_the_socket_tell_when_a_killed_worker_is_gone(started):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    pool.kill(worker)
    readable, _, _ = select.select([worker.sentinel], [], [], 30)
    assert readable, "the pidfd did not become readable when the worker died"
    with pytest.raises(EOFError):  # what the reader turns into on_exit
        worker.reader.read()
    code = worker.exit_code(timeout=30)
    assert code == -signal.SIGKILL
    assert describe_exit(code) == "signal SIGKILL"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_worker_killed_by_a_signal_is_described_by_its_name(started, signum):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    os.kill(worker.pid, signum)
    code = worker.exit_code(timeout=30)
    assert code == -signum
    assert describe_exit(code) == f"signal {signal.Signals(signum).name}"


def test_kill_of_a_worker_that_already_exited_is_harmless(started):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    worker.send(Stop())
    assert worker.exit_code(timeout=30) == 0
    pool.kill(worker)  # reaped already: no ProcessLookupError
    assert worker.exit_code(timeout=30) == 0


def test_exit_code_says_none_while_the_worker_runs(started):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    assert worker.exit_code(timeout=0) is None
    assert process_alive(worker.pid)


def test_sending_to_a_dead_worker_raises_oserror(started):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    pool.kill(worker)
    assert worker.exit_code(timeout=30) == -signal.SIGKILL
    with pytest.raises(OSError):  # the engine's send() catches it; the sentinel reports
        for _ in range(100):  # the first sends may still fit in the socket's buffer
            worker.send(Stop())


def test_a_worker_whose_driver_end_closes_exits_and_removes_the_cluster_files(started, space):
    """A driver that dies without a word (SIGKILL) closes its end: the worker cleans up."""
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    name, fd = space.create_file(4096)
    os.close(fd)
    worker.close()
    worker.close()  # idempotent
    assert wait_until(lambda: not process_alive(worker.pid), timeout=30), \
        f"worker {worker.pid} still runs after its driver's end closed"
    assert worker.process.wait(timeout=30) == 0
    assert not os.path.exists(space.segment_path(name))


def test_stop_all_waits_for_stopped_workers_and_kills_the_rest(started):
    stopping, stuck = started(1), started(2)
    for worker in (stopping, stuck):
        assert isinstance(next_message(worker), WorkerReady)
    stopping.send(Stop())  # the other one is never told: it waits for work forever
    pool.stop_all([stopping, stuck], timeout=1)
    assert stopping.process.returncode == 0
    assert stuck.process.returncode == -signal.SIGKILL
    for worker in (stopping, stuck):
        assert worker.closed and worker.sentinel is None
        assert not process_alive(worker.pid)


def test_stop_all_leaves_no_process_or_descriptor_behind(started):
    """The leak check after every test looks for descriptors; this looks at processes."""
    workers = [started(i) for i in (1, 2, 3)]
    for worker in workers:
        assert isinstance(next_message(worker), WorkerReady)
    workers[0].send(Stop())
    pool.kill(workers[1])
    pool.stop_all(workers, timeout=2)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not children & {w.pid for w in workers}
    assert all(w.process.returncode is not None for w in workers)


def test_a_worker_that_cannot_start_exits_and_says_why(space, tmp_path):
    """A worker whose package does not import (a broken install) fails at once, visibly."""
    broken = tmp_path / "broken"
    (broken / "distkernel").mkdir(parents=True)
    (broken / "distkernel" / "__init__.py").write_text("raise ImportError('broken install')\n")
    worker = pool.start_worker(1, space, "test-cluster", NO_REGISTRY,
                               extra_env={"PYTHONPATH": str(broken)})
    try:
        code = worker.exit_code(timeout=30)
        assert code is not None and code != 0, describe_exit(code)
        # It died with our set-up message unread: a reset rather than a plain EOF; the
        # reader takes either as the worker's end.
        with pytest.raises((EOFError, ConnectionResetError)):
            worker.reader.read()
    finally:
        pool.stop_all([worker], timeout=10)


def test_workers_run_the_drivers_python(started):
    worker = started()
    assert isinstance(next_message(worker), WorkerReady)
    command = psutil.Process(worker.pid).cmdline()
    assert command[0] == sys.executable
    assert command[1:3] == ["-m", "distkernel.engine.worker"]
