"""A per-worker control block in shared memory: cancel and revoke with no message.

A busy worker does not read its socket, so a message telling it to stop would
wait behind the very run it should stop. Instead the driver writes into one
page both processes map, then (for a cancel) sends SIGINT::

    driver (lock held)                          worker
    ──────────────────                          ──────
    ring[n % RING] = seq (revoke) / -seq (cancel)
    count = n + 1  ────── shared page (memfd) ────────▶
    os.kill(pid, SIGINT) (cancel only) ─────▶  SIGINT handler: is the running
                                               seq marked cancelled? raise Cancelled
                                               before any run starts: is it marked?
                                               cancelled -> TaskDone(cancelled); revoked -> drop

The page is an anonymous file (``memfd_create``) passed to the worker as an
inherited fd: it has no name, so nothing is left in ``/dev/shm`` whoever dies
first, even a worker killed while it starts (Jupyter's interrupt at kernel
shutdown does that) by a driver that then exits.

Seqs only grow and are never reused, so a mark cannot hit a later run, and a
run revoked before it even arrived is still dropped. Marks are not cleared:
the ring holds the last ``RING`` of them, far more than the runs one worker is
ever sent ahead. One writer (the driver, under its lock) stores whole aligned
8-byte slots, entry before count; one reader loads count before entries.

The other way, the worker stores the seq of the run it is in (0 between runs) in a
slot of its own, one aligned store per run: when several runs travel in one message
(``RunBatch``), the driver learns from it which one a dead worker was in, and which
one a worker busy with a batch is running, without a message per run.
"""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
import threading

_SLOT = 8
HEADER = 8  # slots: [0] marks written so far; [1] the worker's run now; the others are spare
_RUNNING = 1
RING = mmap.PAGESIZE // _SLOT - HEADER  # the block is one page
SIZE = (HEADER + RING) * _SLOT

REVOKED = 1
CANCELLED = 2


def _anonymous_file() -> int:
    try:
        return os.memfd_create("distkernel-control", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd: a private temporary file, unlinked at once
        fd, path = tempfile.mkstemp(prefix="distkernel-control-")
        os.unlink(path)
        return fd


class ControlBlock:
    """The driver's side. ``fd`` is for the worker to inherit; close it once it has."""

    def __init__(self) -> None:
        self.fd = _anonymous_file()
        try:
            os.ftruncate(self.fd, SIZE)
            self._map = mmap.mmap(self.fd, SIZE)
        except BaseException:
            os.close(self.fd)
            raise
        self._slots = memoryview(self._map).cast("q")
        self._count = 0
        self._recent: list[int] = []  # the marks still in the ring, to skip repeats

    def close_fd(self) -> None:
        """The worker has its copy (or failed to start); the mapping stays."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def revoke(self, seqs: tuple[int, ...]) -> None:
        """Runs sent but not started: the worker drops them without a word."""
        for seq in seqs:
            self._mark(seq)

    def cancel(self, seq: int) -> None:
        """A run to stop: dropped with a cancelled TaskDone, or interrupted if it runs."""
        self._mark(-seq)

    def _mark(self, entry: int) -> None:
        if entry in self._recent:  # cancel() called twice: keep the ring for distinct runs
            return
        self._slots[HEADER + self._count % RING] = entry
        self._count += 1
        self._slots[0] = self._count  # published after the entry it counts
        self._recent.append(entry)
        if len(self._recent) > RING:
            del self._recent[0]

    def running(self) -> int:
        """The seq of the run the worker is in (0: none), as the worker last wrote it."""
        return self._slots[_RUNNING] if not self._map.closed else 0

    def close(self) -> None:
        """Unmap (the memory goes with the worker's mapping); safe to call twice."""
        self.close_fd()
        if not self._map.closed:
            self._slots.release()
            self._map.close()


class ControlView:
    """The worker's side: marks read before each run and by the SIGINT handler; the one
    slot it writes says which run it is in."""

    def __init__(self, fd: int) -> None:
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        self._seen = 0
        self._marks: dict[int, int] = {}  # seq -> REVOKED / CANCELLED, not yet acted on
        self._lock = threading.Lock()  # concurrent actor calls take marks from threads

    def set_running(self, seq: int) -> None:
        """Publish the run this worker is in now (0: between runs)."""
        self._slots[_RUNNING] = seq

    def take(self, seq: int, *, in_order: bool = True) -> int:
        """The mark of a run about to start (0 if none), forgetting it.

        Runs start in seq order (``in_order``), so marks of smaller seqs are stale then;
        an actor running calls concurrently starts them in any order, from any thread.
        """
        count = self._slots[0]
        if count == self._seen and not self._marks:
            return 0
        with self._lock:
            self._sync(count)
            mark = self._marks.pop(seq, 0)
            if self._marks and in_order:
                self._marks = {s: m for s, m in self._marks.items() if s > seq}
        return mark

    def _sync(self, count: int) -> None:
        if count - self._seen > RING and sys.__stderr__ is not None:
            # The driver marked more runs than the ring holds before this worker looked:
            # the oldest marks are lost, and those runs would run anyway.
            sys.__stderr__.write(f"distkernel worker {os.getpid()}: "
                                 f"{count - self._seen - RING} cancel/revoke marks lost\n")
        for index in range(max(self._seen, count - RING), count):
            entry = self._slots[HEADER + index % RING]
            self._marks[abs(entry)] = CANCELLED if entry < 0 else REVOKED
        self._seen = count

    def cancelled(self, seq: int) -> bool:
        """Whether the driver asked to cancel ``seq``; only reads, so safe in a signal handler."""
        return -seq in self._slots[HEADER:].tolist()
