"""The ends of a batch's members, held to travel together, but never for long.

A batch (``RunBatch``) holds about a millisecond of short calls, and its members' ends go
back in one ``BatchDone`` when it is over. One member may still run long (a function
known to be short, called once with a large argument): the ends held before it are then
sent by a helper thread once they have waited ``REPORT_AFTER``, so a call's result is
never held back by a slower call behind it::

    main thread:   start(seq) ── add(end) ── add(end) ── ... ── finish(): BatchDone(last)
    helper thread: every REPORT_AFTER while a batch runs: ends held that long -> BatchDone
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from distkernel.core.protocol import BatchDone, MemberDone

#: How long (seconds) a member's end may wait for the rest of its batch.
REPORT_AFTER = 2e-3


class HeldEnds:
    """What the worker's main thread runs batches with; ``send`` sends a message."""

    def __init__(self, send: Callable[[BatchDone], None]) -> None:
        self._send = send
        self._lock = threading.Lock()  # sends happen under it: reports keep their order
        self._seq = 0  # the batch that runs now (0: none)
        self._ended: list[MemberDone] = []
        self._held_since = 0.0
        self._batches_run = threading.Event()  # set while batches run: the helper watches
        self._helper: threading.Thread | None = None

    def start(self, seq: int) -> None:
        """The batch sent as run ``seq`` begins."""
        with self._lock:
            self._seq = seq
        if self._helper is None:
            self._helper = threading.Thread(target=self._watch, name="distkernel-batch-ends",
                                            daemon=True)
            self._helper.start()
        if not self._batches_run.is_set():
            self._batches_run.set()

    def add(self, ended: MemberDone) -> None:
        """A member ended: held until the batch is over, or for REPORT_AFTER at most."""
        with self._lock:
            if not self._ended:
                self._held_since = time.monotonic()
            self._ended.append(ended)

    def finish(self) -> None:
        """The batch is over: the ends still held go, marked as its last report."""
        with self._lock:
            try:
                self._report(last=True)
            finally:
                self._seq = 0

    def _report(self, *, last: bool) -> None:
        ended, self._ended = tuple(self._ended), []
        self._send(BatchDone(self._seq, ended, last))

    def _watch(self) -> None:
        # A cancel's SIGINT must interrupt the main thread's task, not land here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            self._batches_run.wait()
            time.sleep(REPORT_AFTER)
            with self._lock:
                if not self._seq:  # batches stopped coming: sleep until the next one
                    self._batches_run.clear()
                    continue
                if self._ended and time.monotonic() - self._held_since >= REPORT_AFTER:
                    try:
                        self._report(last=False)
                    except OSError:  # the driver is gone; the watchdog ends the process
                        return
