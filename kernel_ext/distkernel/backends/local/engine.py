"""The local engine: a worker pool and a shared-memory object store in this process.

::

    caller threads (notebook)          I/O thread (reader)             workers
    put / get / submit / cancel        select(): socketpairs,          python -m
        │   take the one lock,         pidfds, a wake-up pipe          distkernel.engine.worker
        │   send RunTask directly ───────────────────────────────────▶ run the task
        │                              ◀── TaskDone / Output / Request ─┘
        └─ get: reads the sockets itself for a moment (lead), then sleeps
           until the I/O thread has sealed the object it waits for

The public operations below do their heavy work (pickling, copying into shared
memory, unpickling) outside the lock and take it only to register or look up;
``state`` holds what runs under it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from distkernel.backends.base import CellSource, Engine, OutputHandler, print_output
from distkernel.backends.local import pool
from distkernel.backends.local.reader import PUMP_EVERY
from distkernel.backends.local.state import EngineCore, QueuedTask
from distkernel.backends.snapshot import (
    ActorSnapshot,
    ClusterSnapshot,
    Counters,
    ObjectSnapshot,
    StoreSnapshot,
    WorkerSnapshot,
)
from distkernel.core import config, refs
from distkernel.core.exceptions import (
    DistkernelError,
    GetTimeoutError,
    ObjectLostError,
    SerializationError,
    exception_text,
)
from distkernel.core.interrupts import DEFERRED_SIGINT
from distkernel.core.protocol import (
    ActorOptions,
    FunctionPayload,
    SharedValue,
    Stop,
    TaskOptions,
    TaskSpec,
    Value,
)
from distkernel.core.refs import ObjectRef
from distkernel.core.timings import TaskRecord
from distkernel.engine import specs
from distkernel.engine.resources import is_strategy_object, local_strategy_error, needs_of
from distkernel.engine.scheduler_types import ActorState, WorkerState
from distkernel.store import object_store, reaper
from distkernel.store.arena import Region
from distkernel.store.serialization import Serialized, serialize

#: How many of the largest objects a snapshot lists (the side panel shows them).
LARGEST_SHOWN = 5

class LocalEngine(EngineCore, Engine):
    """The engine behind ``init()``: public operations on top of the lock-held core."""

    name = "local"

    def __init__(self, settings: config.ClusterSettings,
                 output_handler: OutputHandler | None = None) -> None:
        super().__init__(settings, output_handler or print_output)
        self.started_at = time.time()
        self.store_address = os.path.join(self.space.shm_dir, self.space.prefix)
        try:
            reaper.sweep_dead_drivers()
            refs.set_tracker(self.refs)
            with DEFERRED_SIGINT, self.lock:
                self.execute(self.scheduler.start())
            self.io.start()
        except BaseException as exc:
            self.shutdown()  # the workers started so far, the segments, the reader's files
            if isinstance(exc, OSError):
                msg = (f"distkernel could not start its worker processes: {exc}. The system "
                       f"is short of processes or memory: close other programs or kernels, "
                       f"raise the limit (ulimit -u), or ask for fewer workers: init(2)")
                raise DistkernelError(msg) from exc
            raise

    # -- objects -----------------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        serialized = serialize(value)
        with DEFERRED_SIGINT:  # the counted ref exists before a Ctrl-C can be raised
            object_id = self._store_new(serialized, refs.new_id(), refs=1, made_by="put")
            return ObjectRef.counted(object_id, self.cluster_id)

    def _store_new(self, serialized: Serialized, object_id: str, *, refs: int = 0,
                   pins: int = 0, made_by: str = "") -> str:
        """Reserve, copy (outside the lock) and register a new object.

        A large value gets a region of the arena (spilling others to disk if the store
        is full) and is copied into it with one memcpy, outside the lock.
        """
        size = object_store.stored_size(serialized)
        large = size >= config.INLINE_THRESHOLD
        place = None
        with DEFERRED_SIGINT:
            with self.lock:
                outputs = self.io.read_pending() if large else []
                self.drain()
                self._check_alive(serialized.contained)
                if large:
                    place = self.memory.allocate(size)
                    target, populate = self.memory.arena.view(
                        Region(place.segment, place.offset, size))
                else:
                    self.memory.reserve(size)
            self.io.deliver(outputs)
        try:
            if place is not None:
                if populate is not None:
                    populate()
                spans = object_store.write_into(target, serialized)
                target.release()
                value: Value = SharedValue(place.segment, size, len(serialized.header), spans,
                                           tuple(serialized.contained), False, place.offset)
            else:
                value = object_store.to_inline(serialized)
        except BaseException:
            with DEFERRED_SIGINT, self.lock:
                if place is not None:
                    self.memory.give_back(place)
                else:
                    self.store.release(size)
            raise
        with DEFERRED_SIGINT, self.lock:
            entry = self.store.expect(object_id)
            entry.refs += refs
            entry.pins += pins
            self.store.seal(object_id, value)  # value.nbytes == size, reserved above
            if place is not None:  # a large object: who made it, for the panel
                self._made_by(object_id, made_by,
                              self.tag_source() if self.tag_source is not None else None)
        return object_id

    def get(self, object_refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        ids = [self._own_id(r) for r in object_refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        awaited = Awaited(self, ids)
        with DEFERRED_SIGINT, self.lock:
            self.drain()
            if not self._wait_until(awaited.done, deadline, awaited.last):
                pending = self._pending_ids(ids)
                raise GetTimeoutError(self._timeout_message(pending, len(ids), timeout))
            if awaited.failed is not None:  # raise the first error in, at once
                ids = [awaited.failed]
            self._pending_ids(ids)  # all still there (a shutdown meanwhile removes them)
            if self.store.spilled:  # bring spilled ones back, if they fit again
                for object_id in ids:
                    self.memory.restore(object_id)
            items = [(self.store.value(i), self.memory.view(i)) for i in ids]
        results = []
        for object_id, (value, view) in zip(ids, items):
            try:
                result = object_store.load(value, view)  # type: ignore[arg-type]
            except Exception as exc:
                raise _load_failure(object_id, exc) from exc
            if value.is_error:  # type: ignore[union-attr]
                try:
                    raise result
                finally:  # (held by this frame, which its traceback holds, the error would
                    del result  # keep the frame and its refs until a garbage collection)
            results.append(result)
        return results

    def wait(self, object_refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ids = [self._own_id(r) for r in object_refs]
        deadline = None if timeout is None else time.monotonic() + timeout

        def ready() -> list[str]:
            return [i for i in ids if self.is_ready(i) or i not in self.store]

        with DEFERRED_SIGINT, self.lock:
            self.drain()
            if num_returns == len(ids):  # all of them: as get waits, without rescanning
                awaited = Awaited(self, ids, lost_is_ready=True)
                self._wait_until(awaited.done, deadline, awaited.last)
            else:
                self._wait_until(lambda: len(ready()) >= num_returns, deadline, lambda: None)
            chosen = set(ready()[:num_returns])
        return ([r for r in object_refs if r.hex() in chosen],
                [r for r in object_refs if r.hex() not in chosen])

    def _wait_until(self, done: Callable[[], bool], deadline: float | None,
                    key: Callable[[], str | None]) -> bool:
        """Wait (lock held, SIGINT deferred) until ``done()``; False if the deadline came first.

        The caller first reads the workers' sockets itself for a moment (a small
        task's result comes within it), then sleeps until the object ``key()``
        names is ready (None: any object), or the I/O thread shuts down.
        """
        if done():
            return True
        self.io.lead(done, deadline)
        while not done():
            if DEFERRED_SIGINT.pending:  # Ctrl-C: raised here, where nothing is half done
                DEFERRED_SIGINT.deliver()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self.io.need_reader()
            self.sleepers.sleep(remaining, key())
            self.drain()
        return True

    # -- tasks and actors --------------------------------------------------------------------

    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, actor_id: str = "", method: str = "") -> list[ObjectRef]:
        if not actor_id and (options.num_cpus != 1 or options.num_gpus or options.resources):
            self._check_feasible(specs.task_resources(options), options.name or function.name)
        if is_strategy_object(options.scheduling_strategy):
            raise ValueError(local_strategy_error(options.scheduling_strategy,
                                                  f"{function.name}.remote(...)"))
        spec, serialized, args_id = specs.prepare_call(
            function, args, kwargs, options, self._store_arguments,
            kind="actor_method" if actor_id else "task", actor_id=actor_id, method=method)
        # Hints read without the lock: tasks in flight, and a call within PUMP_WINDOW of
        # the last is a loop of submissions (a burst).
        burst = bool(self.scheduler.tasks or self.queued) and self.io.burst()
        if burst and not (args_id or serialized.contained or spec.resources or spec.pin_worker
                          or actor_id or self.closing):
            return self._queue(spec, serialized.nbytes, function)
        with DEFERRED_SIGINT:
            with self.lock:
                self.drain()
                self._check_alive(serialized.contained, args_id)
                if function.data:
                    self.functions.setdefault(function.function_hash, function.data)
                for return_id in spec.return_ids:
                    self.store.expect(return_id).refs = 1
                if burst:
                    self.hold_sends()
                self.register_task(spec, serialized.contained, args_id, serialized.nbytes)
                outputs = self.io.pump() if burst else []
            # Made before a Ctrl-C can be raised: if one is, dropping them frees the results.
            results = [ObjectRef.counted(i, self.cluster_id) for i in spec.return_ids]
            self.io.deliver(outputs)
        return results

    def _queue(self, spec: TaskSpec, nbytes: int, function: FunctionPayload) -> list[ObjectRef]:
        """A plain task in a burst: queued without the lock, registered with the next
        PUMP_EVERY - 1 (or by the I/O thread once the burst ends, woken if it waits in
        select, or by any call that takes the lock first). Its refs are counted when it is
        registered."""
        cell = self.tag_source() if self.tag_source is not None else None
        outputs: list[Any] = []
        with DEFERRED_SIGINT:  # queued and its refs made, or neither
            self.queued.append(QueuedTask(spec, nbytes, function, cell, time.time()))
            results = [ObjectRef.counted(i, self.cluster_id) for i in spec.return_ids]
            if len(self.queued) == 1 and self.io.reading_now():
                self.io.wake_reader()  # it registers them, soon
            elif len(self.queued) >= PUMP_EVERY:
                with self.lock:
                    self.cork()  # the runs registered and those results free: one write
                    try:
                        self.drain()
                        outputs = self.io.pump_now()
                    finally:
                        self.uncork()
            self.io.deliver(outputs)
        return results

    def create_actor(self, cls: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ObjectRef:
        """Start an actor; the returned ref stands for the actor (handles count as refs)."""
        self._check_feasible(options.resources, options.class_name, default=())
        task_options = TaskOptions(max_retries=0, name=options.class_name)
        spec, serialized, args_id = specs.prepare_call(
            cls, args, kwargs, task_options, self._store_arguments, kind="actor_create",
            actor_id=refs.new_id())
        with DEFERRED_SIGINT, self.lock:  # the ref is made before a Ctrl-C can be raised
            self.drain()
            self._check_alive(serialized.contained, args_id)
            existing = self._claim_name(options, args_id) if options.name else None
            if existing is not None:  # get_if_exists: that actor, not a new one
                self.store.add_refs(existing)
                return ObjectRef.counted(existing, self.cluster_id)
            self.functions.setdefault(cls.function_hash, cls.data)
            # The handle's ref; a detached actor also holds one of its own until kill().
            self.store.expect(spec.actor_id).refs = 2 if options.detached else 1
            self.register_task(spec, serialized.contained, args_id, serialized.nbytes,
                               actor=options)
            return ObjectRef.counted(spec.actor_id, self.cluster_id)

    def _store_arguments(self, serialized: Serialized) -> tuple[Value, str]:
        """Small arguments travel in the message; large ones go through the store, once."""
        if serialized.nbytes < config.INLINE_THRESHOLD:
            return object_store.to_inline(serialized), ""
        args_id = refs.new_id()
        self._store_new(serialized, args_id, pins=1, made_by="task arguments")
        with DEFERRED_SIGINT, self.lock:
            value = self.store.value(args_id)
        return value, args_id  # type: ignore[return-value]

    def _claim_name(self, options: ActorOptions, args_id: str) -> str | None:
        """The live actor to use instead of a new one (get_if_exists), or None (lock held);
        a taken name raises ValueError. Either way the new one's arguments are let go."""
        try:
            existing = self.actor_names.claim(options)
        except ValueError:
            if args_id:
                self.forget(self.store.unpin(args_id))
            raise
        if existing is not None and args_id:
            self.forget(self.store.unpin(args_id))
        return existing

    def kill_actor(self, actor_id: str, no_restart: bool) -> None:
        with DEFERRED_SIGINT, self.lock:
            self.stop_actor(actor_id, no_restart)

    def named_actor(self, name: str,
                    namespace: str | None = None) -> tuple[ObjectRef, ActorOptions] | None:
        """A counted ref to the live actor named ``name`` (in ``namespace``, default the
        cluster's), and its options; None if there is none."""
        with DEFERRED_SIGINT, self.lock:
            actor_id = self.named_actor_ref(name, namespace)
            if actor_id is None:
                return None
            self.store.add_refs(actor_id)
            return ObjectRef.counted(actor_id, self.cluster_id), self.actor_meta[actor_id]

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        object_id = self._own_id(ref)
        with DEFERRED_SIGINT, self.lock:
            self.drain()
            task_id = self.producers.get(object_id)
            if task_id is not None:
                self.execute(self.cancel_run(task_id, force))

    def cancel_task(self, task_id: str, *, force: bool = False) -> bool:
        with DEFERRED_SIGINT, self.lock:
            self.drain()
            if not self.is_unfinished(task_id):
                return False
            self.execute(self.cancel_run(task_id, force))
            return True

    def resize(self, num_workers: int) -> None:
        with DEFERRED_SIGINT, self.lock:
            self.execute(self.scheduler.resize(num_workers))

    # -- inspection ---------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        with DEFERRED_SIGINT, self.lock:
            self.drain()
            scheduler = self.scheduler
            workers = [(self._worker_snapshot(worker_id, state), self.workers.get(worker_id))
                       for worker_id, state in sorted(scheduler.workers.items())]
            actors = tuple(self._actor_snapshot(actor_id, actor)
                           for actor_id, actor in scheduler.actors.items())
            store = self.store.stats()
            largest = tuple(ObjectSnapshot(object_id, entry.value.nbytes, entry.made_by,  # type: ignore[union-attr]
                                           entry.cell)
                            for object_id, entry in self.store.largest(LARGEST_SHOWN))
            queued = len(scheduler.queue) + len(scheduler.special)
            running = sum(len(w.assigned) for w in scheduler.workers.values())
            for batch in self.batches.by_id.values():  # one entry, many tasks
                if scheduler.run_of(batch.spec.task_id) is None:
                    queued += len(batch.pending) - 1
                else:
                    running += len(batch.pending) - 1
            total = tuple(scheduler.resources.capacity.items())
            available = tuple(scheduler.resources.available().items())
            counts = self.counts
            counters = Counters(counts["submitted"], counts["finished"], counts["failed"],
                                counts["cancelled"], counts["workers_started"],
                                counts["workers_died"])
        # Reading /proc takes a while: outside the lock.
        rows = tuple(dataclasses.replace(row, **_process_stats(process))
                     for row, process in workers)
        return ClusterSnapshot(
            self.name, self.cluster_id, self.started_at, time.time(), self.num_workers, rows,
            actors, StoreSnapshot(store["capacity"], store["used_bytes"], store["num_objects"],
                                  store["spilled_bytes"], store["spilled_objects"], largest),
            queued, running, total, available, counters)

    def _worker_snapshot(self, worker_id: int, state: WorkerState) -> WorkerSnapshot:
        spec = self.running_spec(worker_id)
        record = self.records.get(spec.task_id) if spec is not None else None
        return WorkerSnapshot(worker_id, self._pid_of(worker_id), state.state,
                              spec.name if spec else None, spec.task_id if spec else None,
                              record.started if record is not None else None,
                              state.actor_id or None, state.extra, None, None,
                              self.worker_ready_at.get(worker_id))

    def _actor_snapshot(self, actor_id: str, actor: ActorState) -> ActorSnapshot:
        options = self.actor_meta.get(actor_id)
        return ActorSnapshot(actor_id, actor.class_name, options.name if options else "",
                             actor.state, actor.worker_id, self._pid_of(actor.worker_id),
                             actor.queued, actor.restarts)

    def _pid_of(self, worker_id: int | None) -> int | None:
        process = self.workers.get(worker_id) if worker_id is not None else None
        return process.pid if process is not None else None

    def timeline(self, last: int | None = None, *, cell: str | None = None) -> list[TaskRecord]:
        with DEFERRED_SIGINT, self.lock:  # copies: the engine updates records under its lock
            self.drain()  # the tail of a burst, still queued, is recorded first
            records = self.history.last(last) if cell is None else \
                self.cell_timelines.of(cell, last)
            return [record.copy() for record in records]

    # -- the notebook cell behind each task ----------------------------------------------------

    def route_output(self, current_cell: CellSource | None, write: OutputHandler) -> None:
        with DEFERRED_SIGINT, self.lock:
            self.tag_source = current_cell
            self.output_handler = write

    def cell_of_task(self, task_id: str) -> str | None:
        with DEFERRED_SIGINT, self.lock:
            return self.task_tags.get(task_id)

    def cancel_cell(self, cell: str, *, force: bool = False) -> list[str]:
        with DEFERRED_SIGINT, self.lock:
            self.drain()  # the tail of a burst may still be queued
            task_ids = self.tasks_tagged(cell)
            self.cancel_all(task_ids, force)
        return task_ids

    # -- checks ------------------------------------------------------------------------------

    def _pending_ids(self, ids: Sequence[str]) -> list[str]:
        pending = []
        for object_id in ids:
            entry = self.store.entry(object_id)
            if entry is None:
                raise ObjectLostError(self.lost_message(object_id))
            if entry.value is None:
                pending.append(object_id)
        return pending

    def _own_id(self, ref: ObjectRef) -> str:
        if not isinstance(ref, ObjectRef):
            msg = (f"expected an ObjectRef (what .remote() and put() return), got "
                   f"{type(ref).__name__}")
            raise TypeError(msg)
        if ref.cluster_id != self.cluster_id:
            msg = (f"{ref!r} belongs to a cluster that was shut down or restarted, so its value "
                   f"is gone. Run the cell that created it again.")
            raise ObjectLostError(msg)
        return ref.hex()

    def _check_feasible(self, resources: tuple[tuple[str, float], ...], name: str, *,
                        default: tuple[tuple[str, float], ...] | None = None) -> None:
        """A task or actor asking for more than the cluster has fails at the call, as a
        mistake in its options (Ray would wait for ever)."""
        if resources == default or not resources:
            return
        why = self.scheduler.infeasible(needs_of(resources))
        if why is not None:
            msg = (f"{name} can never run on this cluster: {why}. Ask for less, or start the "
                   f"cluster with more.")
            raise ValueError(msg)

    def _check_alive(self, object_ids: Sequence[str], args_id: str = "") -> None:
        """The cluster must still run and refs passed in must still be stored (lock held);
        undo the argument blob if not."""
        lost = next((i for i in object_ids if i not in self.store), None)
        if lost is None and not self.closing:
            return
        if args_id:
            self.forget(self.store.unpin(args_id))
        self._check_open()
        raise ObjectLostError(self.lost_message(lost))  # type: ignore[arg-type]

    def _timeout_message(self, pending: list[str], total: int, timeout: float | None) -> str:
        names = {self.records[t].name for i in pending
                 if (t := self.producers.get(i)) and t in self.records}
        what = f" (from {', '.join(sorted(names))})" if names else ""
        return (f"get() timed out after {timeout} s: {len(pending)} of {total} objects not "
                f"ready{what}. The tasks keep running: call get() again later, raise the "
                f"timeout, or cancel() them.")

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every worker, free every segment; safe to call twice.

        Idle workers are told to stop; busy ones are killed at once, since their tasks'
        results could never be read anyway.
        """
        with DEFERRED_SIGINT:  # a Ctrl-C meanwhile must not leave workers or segments behind
            with self.lock:
                if self.closing:
                    return
                self.closing = True
                self.flush_held()
                for worker_id, process in self.workers.items():
                    state = self.scheduler.workers.get(worker_id)
                    if state is not None and state.assigned:
                        pool.kill(process)
                    else:
                        self.send(worker_id, Stop())
                processes = list(self.workers.values())
                self.workers.clear()
            self.io.stop(timeout)
            pool.stop_all(processes, timeout)
            with self.lock:
                self.closed = True
                self.memory.close()
                self.records.clear()
                self.producers.clear()
                self.batches.clear()
                self.sleepers.wake_all()
            self.space.remove_all()
            os.close(self._space_lock)

    def _check_open(self) -> None:
        """New work on a cluster being shut down (by another thread) fails clearly (lock held)."""
        if self.closing:
            msg = ("distkernel was shut down while this call ran (shutdown() in another "
                   "thread); call it again to start a new cluster")
            raise DistkernelError(msg)


class Awaited:
    """The objects a get (or a wait for all of them) still waits for, from the last one.

    Results mostly come in submission order, so a check costs O(1) until the
    last one is in, and the caller sleeps until that one is ready: a get of
    thousands of results wakes once or twice, not once per result.
    """

    def __init__(self, core: EngineCore, ids: Sequence[str], *,
                 lost_is_ready: bool = False) -> None:
        self._core = core
        self._ids = ids
        self._left = list(ids)
        self._lost_is_ready = lost_is_ready  # wait() counts a freed object as ready, get() fails
        self._errors_seen = -1  # store.errors_sealed when the ids were last scanned for errors
        self.failed: str | None = None  # get: an object whose value is an error, to raise now

    def done(self) -> bool:
        """True once every object is ready (lock held); a freed one raises ObjectLostError
        for get, and counts as ready for wait. For get also as soon as one of them holds
        an error (``failed``): Ray raises it without waiting for the others."""
        left, store = self._left, self._core.store
        if not self._lost_is_ready and store.errors and store.errors_sealed != self._errors_seen:
            self._errors_seen = store.errors_sealed
            self.failed = next((i for i in self._ids
                                if (v := store.value(i)) is not None and v.is_error), None)
            if self.failed is not None:
                return True
        while left:
            entry = store.entry(left[-1])
            if entry is None:
                if self._lost_is_ready:
                    left.pop()
                    continue
                raise ObjectLostError(self._core.lost_message(left[-1]))
            if entry.value is None:
                return False
            left.pop()
        return True

    def last(self) -> str | None:
        """The object to sleep on: the last one not ready yet."""
        return self._left[-1] if self._left else None


def _load_failure(object_id: str, error: Exception) -> SerializationError:
    """A stored value that does not load here: what failed, and what to do."""
    msg = (f"the value of ObjectRef({object_id}) was stored, but rebuilding it here failed "
           f"with {exception_text(error)}. Its class's __reduce__ / __setstate__ (or a "
           f"registered deserializer) raised, or it needs a module this process cannot "
           f"import. Fix that method, or register a serializer for the class with "
           f"dk.register_serializer.")
    return SerializationError(msg)


def _process_stats(process: pool.WorkerProcess | None) -> dict[str, Any]:
    """A worker's CPU use (since the last look) and resident memory, if it can be read."""
    if process is None or process.closed:
        return {}
    try:
        if process.stats is None:
            process.stats = psutil.Process(process.pid)
            process.stats.cpu_percent(None)
        return {"cpu_percent": process.stats.cpu_percent(None),
                "rss": process.stats.memory_info().rss}
    except Exception:  # noqa: BLE001 - the process went away between the snapshot and now
        return {}
