"""Reading the workers: one blocking ``select`` over every worker's socket and pidfd.

::

    selector ── wake-up pipe ........ new workers to watch, or quit
             ├─ worker socketpair ... frames -> EngineCore.handle (lock held)
             └─ worker pidfd ........ the process exited -> EngineCore.on_exit

Whoever holds the reader role selects and reads: usually the I/O thread, which
blocks until a worker writes, exits, or another thread wakes it. A caller that
waits in ``get`` / ``wait`` takes the role for a moment instead (``lead``) and
reads itself, polling without sleeping. A small task's result then arrives in
the thread that wants it, with no wake-up of the I/O thread and then of the
caller (each costs tens of microseconds). After that moment, or once its result
is in, the caller hands the role back::

    I/O thread:  select ─ handle ─ select ─ ...      (turn) ... select ─ handle
    caller:                  get: lead: poll, handle, done ─┘ or spin over ─┘

Task output is handed to the output handler after the lock is released, so
printing never holds up scheduling.
"""

from __future__ import annotations

import os
import pickle
import selectors
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from distkernel.backends.base import OutputHandler
from distkernel.backends.local.pool import WorkerProcess
from distkernel.core import config
from distkernel.core.config import ClusterSettings
from distkernel.core.interrupts import DEFERRED_SIGINT, Sleepers
from distkernel.core.protocol import Output
from distkernel.engine.scheduler import Scheduler


class ReaderHost(Protocol):
    """What reading the workers needs of the engine's lock-held state (``state.EngineCore``):
    where each message goes, and whom to tell that a worker exited."""

    lock: threading.Lock
    sleepers: Sleepers
    scheduler: Scheduler
    settings: ClusterSettings
    workers: dict[int, WorkerProcess]
    output_handler: OutputHandler

    def drain(self) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def flush_held(self) -> None: ...

    def handle(self, worker_id: int, message: Any, *, settle_later: bool = False) -> None: ...

    def settle(self) -> None: ...

    def on_exit(self, worker_id: int) -> None: ...

Outputs = list[tuple[int, Output]]
#: Submissions closer together than this (seconds) are a burst: the submitter reads results.
_PUMP_WINDOW = 200e-6
#: Once in a burst, a gap this long ends it: the driver is sometimes descheduled for a
#: while when there are more busy processes than CPUs, and a loop is still a loop.
_BURST_GAP = 1e-3
#: A caller submitting in a burst registers its queued tasks, reads results and sends held runs
#: every this many tasks
#: (a worker holds about a millisecond of short tasks meanwhile: scheduler.PREFETCH_WORK).
PUMP_EVERY = 32


class IOLoop:
    def __init__(self, core: ReaderHost) -> None:
        self._core = core
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", 0))
        self._to_watch: list[WorkerProcess] = []
        self._quit = False
        # The reader role (all under core.lock): who reads now ("thread", "caller" or
        # None), when a caller last gave it up, and whether one asked for it.
        self._reader: str | None = None
        self._released_at = 0.0
        self._caller_wants_turn = False
        self._last_pump = 0.0  # when a caller last submitted with other tasks in flight
        self._bursting = False  # whether that submission was part of a burst
        self._pumps = 0
        # Set when the I/O thread should look at once whether the role is free. It waits
        # on this, not on the engine's lock: a caller submitting in a burst holds that
        # lock most of the time, and a thread queued on it costs each release a wake-up.
        self._turn = threading.Event()
        self._delivering = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="distkernel-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, process: WorkerProcess) -> None:
        """Start watching a new worker (any thread, lock held)."""
        self._to_watch.append(process)
        self._wake()

    def unwatch(self, process: WorkerProcess) -> None:
        """Stop watching (the reader, lock held)."""
        for fd in (process.conn.fileno(), process.sentinel):
            if fd is None:
                continue
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def stop(self, timeout: float) -> None:
        with self._core.lock:
            self._quit = True
            self._turn.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    # -- a waiting caller reads (lock held) ----------------------------------------------------

    def lead(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Read in this thread, without sleeping, until ``done()``, the spin is over,
        a Ctrl-C came, or the ``deadline`` (``time.monotonic()``) has passed.

        Called by a caller about to wait, with the lock held and SIGINT deferred;
        returns at once if another thread reads now. Each message read restarts the
        spin, so a get of thousands of results reads them all here, with no thread
        hand-offs. Between polls the lock is let go (other threads submit meanwhile)
        and the CPU yielded (a worker woken on this CPU runs at once).
        """
        if self._reader is not None or self._quit:
            self._caller_wants_turn = True  # the I/O thread steps aside after its round
            return
        self._reader = "caller"
        self._core.flush_held()
        finished = False
        try:
            end = self._spin_end(deadline)
            lock = self._core.lock
            while not (finished or self._quit or DEFERRED_SIGINT.pending):
                events = self._selector.select(0)
                outputs: Outputs = []
                if events:
                    self._handle(events, outputs)
                    finished = done()
                    end = self._spin_end(deadline)  # results keep coming: keep reading
                elif time.monotonic() >= end:
                    return
                if finished and not outputs:
                    return
                lock.release()  # print output; let other threads in; let a worker run
                try:
                    self.deliver(outputs)
                    if not finished:
                        os.sched_yield()
                finally:
                    lock.acquire()
        finally:
            self._reader = None
            if finished and self._idle():
                self._released_at = time.monotonic()  # the caller will likely lead again soon
            else:
                self.need_reader()

    def _idle(self) -> bool:
        """Nobody sleeps and no task is unfinished, so nothing needs reading soon (lock held).

        Only then may the sockets go unread for READER_GRACE, waiting for the caller to
        lead again: otherwise results would sit there while workers idle.
        """
        return not self._core.sleepers.asleep and not self._core.scheduler.tasks

    def burst(self) -> bool:
        """Whether this submission comes within PUMP_WINDOW of the last: a caller
        submitting in a loop. Plain tasks are then queued and registered in batches,
        others' runs held and sent in batches, and the caller reads results itself
        (``pump``). Called without the lock: the answer is a hint."""
        now = time.monotonic()
        window = _BURST_GAP if self._bursting else _PUMP_WINDOW
        self._bursting, self._last_pump = now - self._last_pump < window, now
        return self._bursting

    def pump(self) -> Outputs:
        """A caller submitting in a burst handles what workers sent meanwhile (lock held).

        It reads the sockets every PUMP_EVERY submissions itself, instead of trading
        the lock and the GIL with the I/O thread for every result, and sends the runs
        held since then, each worker's in one write; the I/O thread stays aside
        meanwhile (and sends what is held within READER_GRACE once the burst ends).
        Returns task output, to be delivered once the lock is released.
        """
        if self._reader is not None:  # the I/O thread reads: it must have the runs now
            self._ask_for_turn()
            return []
        self._pumps += 1
        if self._pumps % PUMP_EVERY:
            return []
        return self.pump_now()

    def pump_now(self) -> Outputs:
        """``pump``'s reading and sending, now (lock held); the I/O thread, if it reads
        meanwhile, is given the held runs and steps aside after its round."""
        if self._reader is not None:
            self._ask_for_turn()
            return []
        self._released_at = time.monotonic()
        outputs = self.read_pending()
        self._core.flush_held()
        # The burst goes on from here: the next submission is timed from the end of this
        # pump, not from the start of the call it took place in.
        self._last_pump = time.monotonic()
        return outputs

    def _ask_for_turn(self) -> None:
        """A caller submits in a burst while another thread reads (lock held): that one
        gets the held runs now and steps aside after its round, woken at once if it waits
        in select, so that the burst's next submissions queue (and go in batches)."""
        self._core.flush_held()
        self.wake_reader()

    def wake_reader(self) -> None:
        """A caller queued a submission while another thread reads (no lock): that thread
        steps aside after its round, woken now if it waits in select, and registers what
        is queued when it takes the role back, READER_GRACE later, unless the caller has
        by then. Meanwhile the burst's next submissions queue (and go in batches)."""
        self._caller_wants_turn = True
        if self._reader == "thread":
            self._wake()

    def reading_now(self) -> bool:
        """Whether a thread selects on the sockets now: a caller that queues a submission
        meanwhile must wake it (``wake_reader``); read without the lock: a hint."""
        return self._reader is not None

    def read_pending(self) -> Outputs:
        """Handle what workers sent, if nobody else is reading (lock held, never blocks).

        A large put calls it first: a worker that just let go of an arena region
        says so right after its result, and the region can then be reused.
        """
        outputs: Outputs = []
        if self._reader is None and not self._quit:
            events = self._selector.select(0)
            if events:
                self._handle(events, outputs)
        return outputs

    @staticmethod
    def _spin_end(deadline: float | None) -> float:
        end = time.monotonic() + config.DRIVER_SPIN
        return end if deadline is None else min(end, deadline)

    def need_reader(self) -> None:
        """A caller is about to sleep: someone must read, now (lock held)."""
        if self._reader is None:
            self._released_at = 0.0
            self._turn.set()

    # -- the I/O thread ------------------------------------------------------------------------

    def _run(self) -> None:
        core = self._core
        while True:
            if not self._wait_for_turn():
                return
            events = self._selector.select()
            outputs: Outputs = []
            with core.lock:
                if self._quit:
                    return
                self._handle(events, outputs)
                self._reader = None
                if self._caller_wants_turn and not core.sleepers.asleep:
                    # A caller waited and got what it wanted, or submits: it reads itself.
                    self._caller_wants_turn = False
                    self._released_at = time.monotonic()
            self.deliver(outputs)

    def _wait_for_turn(self) -> bool:
        """Take the reader role once no caller holds it or is likely to again; False: quit.

        While callers lead, this thread looks again every READER_GRACE seconds: a
        caller that got its result gives the role up without a wake-up, which would
        cost it more than its whole wait. It looks without the lock (the fields read
        are a hint) and takes it only to claim the role.
        """
        core = self._core
        while True:
            self._turn.clear()  # a set() from here on ends the wait below at once
            if not self._quit:
                busy = self._reader is not None
                idle = time.monotonic() - self._released_at
                if busy or idle < config.READER_GRACE:
                    self._turn.wait(config.READER_GRACE if busy else config.READER_GRACE - idle)
                    continue
            with core.lock:
                if self._quit:
                    return False
                if self._reader is None and \
                        time.monotonic() - self._released_at >= config.READER_GRACE:
                    self._reader = "thread"
                    core.drain()  # a caller's burst left submissions queued, runs held:
                    core.flush_held()  # nobody else registers and sends them now
                    return True

    # -- handling, by whoever reads --------------------------------------------------------------

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]], outputs: Outputs) -> None:
        """Handle what select reported (lock held); task output is collected for later."""
        core = self._core
        core.cork()
        try:
            core.drain()
            for key, _ in events:
                self._guarded(self._on_event, key.data, outputs)
        finally:
            core.uncork()

    def deliver(self, outputs: Outputs) -> None:
        """Pass task output on (lock released), unless init(log_to_driver=False) said not to.

        One thread at a time: the I/O thread and a caller may both have read some, and an
        output handler need not be thread-safe (two threads printing to one ``sys.stdout``
        at once can lose lines)."""
        if not outputs or not self._core.settings.log_to_driver:
            return
        with self._delivering:
            for worker_id, output in outputs:
                self._guarded(self._core.output_handler, worker_id, output.task_id,
                              output.stream, output.text)

    def _on_event(self, data: tuple[str, int], outputs: list[tuple[int, Output]]) -> None:
        kind, worker_id = data
        if kind == "wake":
            self._on_wake()
        elif kind == "conn":
            self._read(worker_id, outputs)
        else:
            self._core.on_exit(worker_id)

    @staticmethod
    def _guarded(action: Any, *args: Any) -> None:
        """A bug in handling one event must not end the thread every get() waits on."""
        try:
            action(*args)
        except Exception:  # noqa: BLE001 - reported, then the loop goes on
            print("distkernel: internal error in the I/O thread (please report it):",
                  file=sys.__stderr__)
            traceback.print_exc(file=sys.__stderr__)

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        for process in self._to_watch:
            if process.closed:
                continue
            self._selector.register(process.conn.fileno(), selectors.EVENT_READ,
                                    ("conn", process.worker_id))
            if process.sentinel is not None:
                self._selector.register(process.sentinel, selectors.EVENT_READ,
                                        ("exit", process.worker_id))
        self._to_watch.clear()

    def _read(self, worker_id: int, outputs: list[tuple[int, Output]]) -> None:
        process = self._core.workers.get(worker_id)
        if process is None or process.closed:
            return
        try:
            frames = process.reader.read()
        except (EOFError, OSError):
            self._core.on_exit(worker_id)
            return
        for frame in frames:  # one message's failure must not lose those read with it
            self._guarded(self._take, worker_id, frame, outputs)
        self._guarded(self._core.settle)

    def _take(self, worker_id: int, frame: bytes, outputs: Outputs) -> None:
        message = pickle.loads(frame)
        if type(message) is Output:
            outputs.append((worker_id, message))
        else:
            self._core.handle(worker_id, message, settle_later=True)
