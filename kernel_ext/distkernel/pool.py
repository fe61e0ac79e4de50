"""Starting, stopping and killing worker processes.

Each worker is ``python -m distkernel.worker`` started with fork+exec (never a
bare fork: the driver is a threaded Jupyter kernel), connected to the driver by
one ``multiprocess`` socketpair Connection. The driver watches two things per
worker: the connection (messages, and EOF when the process is gone) and a
pidfd, the process sentinel, which becomes readable the moment it exits.
Workers do not import the notebook's ``__main__``; they get the driver's
``sys.path`` so modules importable in the notebook import there too.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass, field

import psutil
from multiprocess import Pipe
from multiprocess.connection import Connection

from distkernel.wire import FrameReader


@dataclass(slots=True)
class WorkerProcess:
    """One live worker as the driver sees it."""

    worker_id: int
    process: subprocess.Popen[bytes]
    conn: Connection
    sentinel: int | None
    reader: FrameReader
    functions: set[str] = field(default_factory=set)  # function hashes it already has
    stats: psutil.Process | None = None
    closed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: object) -> None:
        self.conn.send_bytes(pickle.dumps(message, protocol=5))

    def exit_code(self, timeout: float = 5.0) -> int | None:
        """Reap the process; its exit code (negative: the signal that killed it)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.close()
        if self.sentinel is not None:
            os.close(self.sentinel)


def start_worker(worker_id: int, driver_pid: int, cluster_id: str, registry: bytes) -> WorkerProcess:
    """Fork+exec a worker and send it its set-up; returns before it is ready."""
    parent_end, child_end = Pipe(duplex=True)
    child_fd = child_end.fileno()
    command = [sys.executable, "-m", "distkernel.worker", str(child_fd), str(worker_id),
               str(driver_pid), cluster_id]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, pass_fds=(child_fd,), close_fds=True, env=env,
                               stdin=subprocess.DEVNULL)
    child_end.close()
    try:
        sentinel: int | None = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd: EOF on the connection still tells
        sentinel = None
    parent_end.send_bytes(pickle.dumps({"sys_path": list(sys.path), "registry": registry},
                                       protocol=5))
    return WorkerProcess(worker_id, process, parent_end, sentinel, FrameReader(parent_end.fileno()))


def kill(worker: WorkerProcess) -> None:
    """SIGKILL; the death is noticed through the sentinel like any crash."""
    try:
        worker.process.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all(workers: list[WorkerProcess], timeout: float) -> None:
    """Wait for workers that were told to stop; kill those that do not exit in time."""
    for worker in workers:
        if worker.exit_code(timeout) is None:
            kill(worker)
            worker.exit_code(timeout)
        worker.close()
