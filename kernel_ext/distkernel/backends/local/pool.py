"""Starting, stopping and killing worker processes.

Each worker is ``python -m distkernel.engine.worker`` started with fork+exec (never a
bare fork: the driver is a threaded Jupyter kernel), connected to the driver by
one ``multiprocess`` socketpair Connection, and handed a control block (an
inherited memfd, see ``control``) through which its runs are cancelled and
revoked. The driver watches two things per worker: the connection (messages,
and EOF when the process is gone) and a pidfd, the process sentinel, which
becomes readable the moment it exits. Sends go through an ``Outbox``, which
never blocks: a busy worker does not read until it needs a message. Workers do
not import the notebook's ``__main__``; they get the driver's ``sys.path`` so
modules importable in the notebook import there too.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil
from multiprocess.connection import Connection

from distkernel.core.wire import FrameReader, Outbox
from distkernel.engine.control import ControlBlock
from distkernel.store.reaper import Space

#: Socket buffers (capped by net.core.wmem_max / rmem_max): bursts of runs and replies fit
#: without the Outbox's flusher thread.
SOCKET_BUFFER = 4 << 20


@dataclass(slots=True)
class WorkerProcess:
    """One live worker as the driver sees it."""

    worker_id: int
    process: subprocess.Popen[bytes]
    conn: Connection
    sentinel: int | None
    reader: FrameReader
    outbox: Outbox
    control: ControlBlock
    functions: set[str] = field(default_factory=set)  # function hashes it already has
    stats: psutil.Process | None = None
    closed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: object) -> None:
        self.outbox.send(pickle.dumps(message, protocol=5))

    def send_many(self, messages: Sequence[object]) -> None:
        """Several messages as one frame: a list, pickled at once (half the cost of one
        pickle per message, and a third of the worker's cost to read them)."""
        if len(messages) == 1:
            self.outbox.send(pickle.dumps(messages[0], protocol=5))
        else:
            self.outbox.send(pickle.dumps(list(messages), protocol=5))

    def interrupt(self, *seqs: int) -> None:
        """Cancel runs: each marked first, so it is dropped if it has not started, and
        interrupted by SIGINT if it runs (the worker ignores a SIGINT for another run)."""
        for seq in seqs:
            self.control.cancel(seq)
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def revoke(self, seqs: tuple[int, ...]) -> None:
        """Runs sent but not started: the worker drops them when it comes to them."""
        self.control.revoke(seqs)

    def exit_code(self, timeout: float = 5.0) -> int | None:
        """Reap the process; its exit code (negative: the signal that killed it), or None
        if it still runs after ``timeout`` seconds.

        Blocks on the pidfd: ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms,
        which made every shutdown take ~65 ms.
        """
        if self.sentinel is not None and self.process.poll() is None:
            readable, _, _ = select.select([self.sentinel], [], [], timeout)
            if not readable:
                return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbox.close()
        self.conn.close()
        self.control.close()
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None


def _socketpair() -> tuple[socket.socket, socket.socket]:
    parent, child = socket.socketpair()
    for end in (parent, child):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return parent, child


def start_worker(worker_id: int, space: Space, cluster_id: str, registry: bytes,
                 extra_env: Mapping[str, str] | None = None,
                 working_dir: str | None = None) -> WorkerProcess:
    """Fork+exec a worker and send it its set-up; returns before it is ready.

    The worker learns where the cluster's files are (``space``) from its command line,
    so that it can clean them up even if its driver dies before saying anything else.
    """
    control = ControlBlock()
    parent, child = _socketpair()
    try:
        command = [sys.executable, "-m", "distkernel.engine.worker", str(child.fileno()),
                   str(worker_id), cluster_id, str(control.fd), *space.describe()]
        # A dict display, not dict(**...): a runtime_env that sets PYTHONUNBUFFERED too
        # made dict() raise TypeError ("multiple values for keyword argument").
        env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        # A session of its own: Jupyter's interrupt and ipykernel's shutdown signal the
        # kernel's process group; our workers hear only from us (and notice if we die).
        process = subprocess.Popen(command, pass_fds=(child.fileno(), control.fd),
                                   close_fds=True, env=env, stdin=subprocess.DEVNULL,
                                   cwd=working_dir,
                                   start_new_session=True)
    except BaseException:
        parent.close()
        control.close()
        raise
    finally:
        child.close()
        control.close_fd()
    try:
        sentinel: int | None = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd: EOF on the connection still tells
        sentinel = None
    conn = Connection(os.dup(parent.fileno()))  # the I/O thread reads and selects on it
    worker = WorkerProcess(worker_id, process, conn, sentinel, FrameReader(conn.fileno()),
                           Outbox(parent), control)
    # A working_dir comes first on the path, as in Ray: its modules import in tasks.
    path = [working_dir, *sys.path] if working_dir else list(sys.path)
    worker.send({"sys_path": path, "registry": registry})
    return worker


def kill(worker: WorkerProcess) -> None:
    """SIGKILL; the death is noticed through the sentinel like any crash."""
    try:
        worker.process.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all(workers: list[WorkerProcess], timeout: float) -> None:
    """Wait for workers that were told to stop (or killed); kill those that have not
    exited when ``timeout`` seconds are up, all counted from now."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        if worker.exit_code(max(0.0, deadline - time.monotonic())) is None:
            kill(worker)
            worker.exit_code(timeout)
        worker.close()
