"""The worker's end of its socket: read by whichever thread needs a message.

There is no reader thread: handing each message from one to the main thread
cost a thread wake-up per task. The main thread reads when it is idle (the next
run) and while a task waits in ``get`` / ``wait`` / ``put`` (its reply). Runs
that arrive meanwhile are queued and run later, in order. If a task calls
``get`` from several threads, one reads at a time and routes replies to the
others (``_reading`` under ``_cond``).

Nobody reads while a task computes, so driver death is noticed by a watchdog
thread that only polls for hang-up (``POLLRDHUP``): it never reads, so it can
never take a message from the main thread.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from distkernel.core import config
from distkernel.core.protocol import Reply
from distkernel.core.wire import FrameReader

_T = TypeVar("_T")
#: A poll-and-yield round of a spin that took longer than this ran another process meanwhile.
_CPU_TAKEN = 50e-6
#: At most this many waits in a row go without a spin after spins found nothing.
_MAX_SKIPPED_SPINS = 63
_MAX_POLL_MS = 2**31 - 1
_HANG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Mailbox:
    """Messages from the driver: replies by request id, everything else in arrival order."""

    def __init__(self, fd: int, on_eof: Callable[[], None],
                 guard: AbstractContextManager[Any] | None = None) -> None:
        self._reader = FrameReader(fd)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._on_eof = on_eof
        # Held by the main thread while it reads and routes, so a cancel's SIGINT cannot
        # raise in the middle and lose frames; it is raised when the guard is left.
        self._guard = guard if guard is not None else nullcontext()
        self._cond = threading.Condition(threading.Lock())
        self._reading = False
        self._replies: dict[int, Reply] = {}
        self._abandoned: set[int] = set()  # requests whose waiter left (cancelled)
        self.queued: deque[Any] = deque()  # RunTask / SetSerializers / Stop
        self.poll_when_idle = True  # the driver's advice with the last task (RunTask.poll_after)
        self._misses = 0  # spins in a row that found nothing (capped), and waits left
        self._spins_to_skip = 0  # without a spin because of them

    def next_message(self) -> Any:
        """The next run or control message; blocks. Idle main thread only."""
        message = self._wait(self._take_queued, None, interruptible=False)
        assert message is not None
        return message

    def reply(self, request_id: int, timeout: float | None, interruptible: bool) -> Reply | None:
        """The reply to a request, or None after ``timeout`` seconds.

        ``interruptible``: the caller is the main thread in a task, which a cancel may
        interrupt while it waits (never while it reads).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        reply = None
        try:
            reply = self._wait(lambda: self._replies.pop(request_id, None), deadline,
                               interruptible)
            return reply
        finally:
            if reply is None:  # timed out or cancelled: the reply may still come, drop it
                with self._cond:
                    if self._replies.pop(request_id, None) is None:
                        self._abandoned.add(request_id)

    def _take_queued(self) -> Any:
        return self.queued.popleft() if self.queued else None

    def _wait(self, take: Callable[[], _T | None], deadline: float | None,
              interruptible: bool) -> _T | None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    found = take()
                    if found is not None:
                        return found
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    if not self._reading:
                        self._reading = True
                        break
                    cond.wait(remaining)  # another thread reads; it routes ours to us
            try:
                self._read_once(remaining, interruptible)
            finally:
                with cond:
                    self._reading = False
                    cond.notify_all()

    def _read_once(self, timeout: float | None, interruptible: bool) -> None:
        """Wait for data (spinning a moment, then blocking, interruptible and bounded),
        then read and route it (guarded)."""
        if timeout is None and not interruptible:  # idle: between tasks
            spin = config.WORKER_SPIN if self.poll_when_idle else 0.0
        else:  # a task waits for a reply
            spin = config.WORKER_SPIN if timeout is None else min(timeout, config.WORKER_SPIN)
        if not self._spin_paid_off(spin):
            # poll() takes a C int of milliseconds; a longer wait goes round the loop again.
            wait_ms = None if timeout is None else min(math.ceil(timeout * 1000), _MAX_POLL_MS)
            started = time.perf_counter()
            if not self._poller.poll(wait_ms):
                return
            if time.perf_counter() - started < spin:  # a spin would have caught it
                self._misses = self._spins_to_skip = 0
        if interruptible:
            with self._guard:
                self._take_frames()
        else:  # the idle main thread or another thread: no cancel can raise here
            self._take_frames()

    def _spin_paid_off(self, duration: float) -> bool:
        """Spin, unless recent spins found nothing: then skip the next 1, 3, 7 ... waits,
        until a message comes soon enough after a wait began for a spin to catch it.

        A spin pays off in tight loops; in a pool with more processes than CPUs,
        or for tasks that come seconds apart, it only burns CPU a neighbour needs.
        """
        if duration <= 0:
            return False
        if self._spins_to_skip:
            self._spins_to_skip -= 1
            return False
        if self._spin_until_readable(duration):
            self._misses = 0
            return True
        self._misses = min(2 * self._misses + 1, _MAX_SKIPPED_SPINS)
        self._spins_to_skip = self._misses
        return False

    def _spin_until_readable(self, duration: float) -> bool:
        """Poll without sleeping for up to ``duration`` seconds, while the CPU is free.

        In a tight loop of small tasks the next message comes within tens of
        microseconds, and waking a sleeping process costs about as much again;
        a short spin after each task halves the round trip. Each poll yields the
        CPU, and a yield that took long means another process wanted it: then
        the spin stops, so spinning never slows a busy pool down.
        """
        poll, clock, yield_cpu = self._poller.poll, time.perf_counter, os.sched_yield
        now = clock()
        end = now + duration
        while not poll(0):
            if now >= end:
                return False
            yield_cpu()
            after = clock()
            if after - now > _CPU_TAKEN:
                return False
            now = after
        return True

    def _take_frames(self) -> None:
        try:
            frames = self._reader.read()
        except (EOFError, OSError):
            self._on_eof()
            return
        with self._cond:
            for frame in frames:
                message = pickle.loads(frame)
                if type(message) is list:  # several sent at once (the driver's send_many)
                    for each in message:
                        self._route(each)
                else:
                    self._route(message)

    def _route(self, message: Any) -> None:
        if type(message) is Reply:
            if message.request_id in self._abandoned:
                self._abandoned.discard(message.request_id)
            else:
                self._replies[message.request_id] = message
        else:
            self.queued.append(message)


def watch_for_hang_up(fd: int, on_hang_up: Callable[[], None]) -> threading.Thread:
    """Call ``on_hang_up`` the moment the driver's end of the socket closes."""

    def watch() -> None:
        # A cancel's SIGINT must interrupt the main thread, not this one.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)  # POLLHUP / POLLERR are always reported
        while True:
            if any(mask & _HANG_UP for _, mask in poller.poll()):
                on_hang_up()
                return

    thread = threading.Thread(target=watch, name="distkernel-watchdog", daemon=True)
    thread.start()
    return thread
