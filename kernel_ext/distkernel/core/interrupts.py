"""Ctrl-C (SIGINT) never cuts the engine's bookkeeping short, yet still stops a wait.

A KeyboardInterrupt can land between any two bytecodes of the main thread:
between reading a worker's result and storing it, half-way through registering
a task, or in the ``finally`` where ``threading.Condition.wait`` takes its lock
back (leaving a caller that believes it holds the lock without it). So the
engine's lock-held sections run with SIGINT deferred: the handler only notes
the interrupt, and it is raised when the section ends::

    with DEFERRED_SIGINT, engine.lock:
        ...                      # a Ctrl-C meanwhile is only noted
    # ... and raised here, with the lock released and nothing half done

A wait inside such a section sleeps in ``Sleepers.sleep``: a deferred Ctrl-C
wakes it, and the waiting loop then calls ``DEFERRED_SIGINT.deliver()``.

Workers use the same section around reading and sending frames, in front of
their own handler (a cancel's SIGINT), so a cancel never cuts a frame in half.

The handler is put in front of whatever handler is current (ipykernel sets its
own around each cell) and passes every other interrupt straight through. Only
the main thread runs signal handlers; in other threads all of this costs a
thread-id comparison.
"""

from __future__ import annotations

import signal
import threading

# The C function under signal.getsignal, which converts its answer to an enum member and
# costs microseconds; this runs on every get.
from _signal import getsignal as _current_handler
from types import FrameType
from typing import Any


class DeferredSigint:
    """A re-entrant section in which SIGINT waits; outside it, SIGINT acts as before."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self._depth = 0
        self._pending = False
        self._previous: Any = None
        self._wake: threading.Lock | None = None  # the main thread's sleep, if it sleeps
        self._handler = self._on_sigint  # one bound method, so getsignal() can recognise it

    def __enter__(self) -> None:
        if threading.get_ident() != self._main:
            return
        if _current_handler(signal.SIGINT) is not self._handler:
            self._install()
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        if threading.get_ident() != self._main or not self._depth:
            return
        self._depth -= 1
        if not self._depth and self._pending:
            self.deliver()

    @property
    def handler(self) -> Any:
        """The SIGINT handler this section installs in front of the previous one."""
        return self._handler

    @property
    def previous(self) -> Any:
        """The handler an interrupt outside a section goes to."""
        return self._previous

    @property
    def pending(self) -> bool:
        """A Ctrl-C came in the main thread and waits to be raised (False in other threads)."""
        return self._pending and threading.get_ident() == self._main

    def deliver(self) -> None:
        """Raise the waiting interrupt now (the caller is at a point where that is safe)."""
        self._pending = False
        if callable(self._previous):
            self._previous(signal.SIGINT, None)

    def wake_on_interrupt(self, waiter: threading.Lock | None) -> bool:
        """Let a deferred Ctrl-C release ``waiter`` (None: no longer); False, and nothing
        done, outside the main thread."""
        if threading.get_ident() != self._main:
            return False
        self._wake = waiter
        return True

    def _install(self) -> None:
        current = _current_handler(signal.SIGINT)
        if callable(current):  # SIG_DFL / SIG_IGN raise nothing, so there is nothing to hold
            self._previous = current
            signal.signal(signal.SIGINT, self._handler)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self._depth:
            self._previous(signum, frame)
            return
        self._pending = True
        if self._wake is not None:
            _release(self._wake)


DEFERRED_SIGINT = DeferredSigint()


class Sleepers:
    """Threads asleep (holding ``lock`` before and after) until an object is ready.

    What ``threading.Condition`` does, but a sleeper names the object it waits
    for (None: any), so finishing one of thousands of tasks wakes nobody else;
    and a deferred Ctrl-C wakes the main thread's sleep, with the lock taken
    back while SIGINT is still deferred, so an interrupt can never leave a
    sleeper without its lock.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._asleep: dict[threading.Lock, str | None] = {}

    @property
    def asleep(self) -> bool:
        """Someone sleeps (lock held)."""
        return bool(self._asleep)

    def sleep(self, timeout: float | None, until: str | None) -> None:
        """Release the lock, sleep until object ``until`` is ready, take the lock back.

        Called with the lock held and SIGINT deferred (``with DEFERRED_SIGINT, lock``);
        after a Ctrl-C woke it, the caller sees ``DEFERRED_SIGINT.pending``.
        """
        waiter = threading.Lock()
        waiter.acquire()
        self._asleep[waiter] = until
        main = DEFERRED_SIGINT.wake_on_interrupt(waiter)
        self._lock.release()
        try:
            if not DEFERRED_SIGINT.pending:
                waiter.acquire(timeout=-1 if timeout is None else max(timeout, 0))
        finally:
            if main:
                DEFERRED_SIGINT.wake_on_interrupt(None)
            self._lock.acquire()
            self._asleep.pop(waiter, None)

    def ready(self, object_ids: tuple[str, ...]) -> None:
        """Wake whoever sleeps until one of these objects, or any object (lock held)."""
        if not self._asleep:
            return
        woken = [w for w, until in self._asleep.items() if until is None or until in object_ids]
        for waiter in woken:
            del self._asleep[waiter]
            _release(waiter)

    def wake_all(self) -> None:
        """Wake every sleeper (lock held)."""
        for waiter in self._asleep:
            _release(waiter)
        self._asleep.clear()


def _release(waiter: threading.Lock) -> None:
    try:
        waiter.release()
    except RuntimeError:  # already woken
        pass
