"""An actor that runs many calls at once: on threads, or on an asyncio event loop.

Ray's two kinds, chosen by how the class is written and its options::

    main thread: read RunTask ──▶ submit ──┬─▶ threaded: a pool of max_concurrency threads
                 (keeps reading)           │   per concurrency group; each call runs there
                                           └─▶ async: one event-loop thread; each call is a
                                               coroutine, at most max_concurrency at once
                                               per group (a semaphore)
    each call, when done: TaskDone (any order) ──▶ driver

A plain actor (``max_concurrency=1``, no ``async def`` method) runs its calls one at
a time in the main thread, in order, as before. A cancel reaches a call that has not
started yet (its mark is read when it starts); a running async call is cancelled
(``asyncio.CancelledError`` inside it); a running threaded call cannot be
interrupted, as in Ray. What a call prints goes to the cell that made the call: the
call's task id lives in a context variable, which each thread and each coroutine
has its own copy of.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distkernel.core.protocol import ActorOptions, RunTask
from distkernel.engine.worker.calls import CURRENT_CALL, CallRunner, Outcome

DEFAULT_GROUP = ""


def concurrent_calls(worker: CallRunner, options: ActorOptions) -> ConcurrentCalls | None:
    """How an actor's calls run once it exists: None for one at a time, in order."""
    if options.is_async:
        return AsyncCalls(worker, options)
    if options.max_concurrency > 1 or options.concurrency_groups:
        return ThreadedCalls(worker, options)
    return None


class ConcurrentCalls(ABC):
    """Calls of one actor, several at once. ``submit`` is called by the main thread."""

    def __init__(self, worker: CallRunner, options: ActorOptions) -> None:
        self._worker = worker
        self._limits = {DEFAULT_GROUP: max(1, options.max_concurrency),
                        **dict(options.concurrency_groups)}
        self._groups = dict(options.method_groups)

    def group_of(self, message: RunTask) -> str:
        group = self._groups.get(message.spec.method, DEFAULT_GROUP)
        return group if group in self._limits else DEFAULT_GROUP

    @abstractmethod
    def submit(self, message: RunTask) -> None:
        """Start a call (main thread); it reports itself when done."""

    @abstractmethod
    def cancel_marked(self) -> None:
        """A cancel arrived (SIGINT, main thread): interrupt marked calls that can be."""

    def run_call(self, message: RunTask) -> None:
        """A call in a thread of its own: run, report (what threads and the loop share)."""
        worker, spec = self._worker, message.spec
        CURRENT_CALL.set(spec.task_id)
        started = time.time()
        try:
            if worker.control.take(message.seq, in_order=False):  # cancelled before it ran
                outcome = Outcome(cancelled=True)
            else:
                outcome = worker.call(message)
        except BaseException as exc:  # noqa: BLE001 - every call's error goes to get()
            outcome = worker.failure(spec, exc)
        worker.finish(message, started, outcome)


class ThreadedCalls(ConcurrentCalls):
    """``max_concurrency=N``: up to N calls at once on threads, per concurrency group."""

    def __init__(self, worker: CallRunner, options: ActorOptions) -> None:
        super().__init__(worker, options)
        self._pools = {group: ThreadPoolExecutor(limit, f"actor-{group or 'calls'}")
                       for group, limit in self._limits.items()}

    def submit(self, message: RunTask) -> None:
        context = contextvars.copy_context()  # each call sets its own CURRENT_CALL
        self._pools[self.group_of(message)].submit(context.run, self.run_call, message)

    def cancel_marked(self) -> None:
        """Nothing to do now: a running thread cannot be interrupted (as in Ray), and a
        call still waiting for a thread reads its mark when it starts."""


class AsyncCalls(ConcurrentCalls):
    """An actor with ``async def`` methods: its calls are coroutines on one event loop in a
    thread of their own, at most ``max_concurrency`` at once per group. A plain method
    of such an actor runs on the loop too (and holds it while it runs, as in Ray)."""

    def __init__(self, worker: CallRunner, options: ActorOptions) -> None:
        super().__init__(worker, options)
        self._loop = asyncio.new_event_loop()
        self._running: dict[int, asyncio.Task[Any]] = {}  # seq -> its coroutine's task
        self._lock = threading.Lock()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        thread = threading.Thread(target=self._loop.run_forever, name="actor-event-loop",
                                  daemon=True)
        thread.start()

    def submit(self, message: RunTask) -> None:
        asyncio.run_coroutine_threadsafe(self._run(message), self._loop)

    async def _run(self, message: RunTask) -> None:
        group = self.group_of(message)
        semaphore = self._semaphores.get(group)
        if semaphore is None:  # made on the loop, where it is used
            semaphore = self._semaphores[group] = asyncio.Semaphore(self._limits[group])
        async with semaphore:
            await self._call(message)

    async def _call(self, message: RunTask) -> None:
        worker, spec = self._worker, message.spec
        CURRENT_CALL.set(spec.task_id)
        started = time.time()
        task = asyncio.current_task()
        assert task is not None
        with self._lock:
            self._running[message.seq] = task
        try:
            if worker.control.take(message.seq, in_order=False):
                outcome = Outcome(cancelled=True)
            else:
                function = worker.callable_for(spec, message.function)
                args, kwargs = worker.arguments(message)
                value = function(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                outcome = worker.outcome_of(spec, value)
        except BaseException as exc:  # noqa: BLE001 - CancelledError included: reported
            outcome = worker.failure(spec, exc)
        finally:
            with self._lock:
                self._running.pop(message.seq, None)
        worker.finish(message, started, outcome)

    def cancel_marked(self) -> None:
        with self._lock:
            running = list(self._running.items())
        for seq, task in running:
            if self._worker.control.cancelled(seq):
                self._loop.call_soon_threadsafe(task.cancel)
