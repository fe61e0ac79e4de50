"""The lock-held heart of the local engine: memory (``memory.Memory``) + scheduler + workers.

Every method here runs with ``lock`` held, called by a caller thread (submit,
put, get ...) or by whoever reads the workers' sockets (worker messages,
exits): the I/O thread, or a caller waiting in get for a moment. Scheduler
instructions are carried out at once: sends go to a worker's socket through the
pool's ``Outbox``, which never blocks (what a busy worker's socket cannot take
is queued and written by a helper thread), processes are started or killed,
results are sealed and waiters woken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from distkernel.backends.base import CellSource, OutputHandler
from distkernel.backends.local import pool
from distkernel.backends.local.actor_names import ActorNames
from distkernel.backends.local.batches import Batch, Batches, Grouper
from distkernel.backends.local.memory import Memory
from distkernel.backends.local.reader import IOLoop
from distkernel.backends.local.regions import Borrowed
from distkernel.backends.local.requests import RequestHandler
from distkernel.core import config
from distkernel.core.exceptions import (
    DistkernelError,
    ObjectStoreFullError,
    TaskCancelledError,
    WorkerCrashedError,
    actor_exit_reason,
    actor_gone,
    describe_exit,
)
from distkernel.core.interrupts import DEFERRED_SIGINT, Sleepers
from distkernel.core.protocol import (
    ActorOptions,
    BatchDone,
    FunctionPayload,
    InlineValue,
    RefDelta,
    Request,
    RunBatch,
    RunTask,
    SetSerializers,
    SharedValue,
    Stop,
    TaskDone,
    TaskSpec,
    Value,
    WorkerReady,
)
from distkernel.core.timings import CellTimelines, TaskCells, TaskRecord, Timeline
from distkernel.engine import specs
from distkernel.engine.scheduler import (
    Dispatch,
    FailTask,
    Instruction,
    InterruptWorker,
    KillWorker,
    Revoke,
    Scheduler,
    StartWorker,
    StopWorker,
)
from distkernel.store import object_store
from distkernel.store.pickler import registry
from distkernel.store.reaper import Space
from distkernel.store.serialization import serialize


class QueuedTask(NamedTuple):
    """A submission made without the lock, waiting to be registered (``drain``)."""

    spec: TaskSpec
    nbytes: int  # its arguments' size, inline in the spec
    function: FunctionPayload
    cell: str | None  # the notebook cell it was submitted from
    submitted: float  # epoch seconds


def _as_value(error: BaseException) -> InlineValue:
    """An exception stored as an object's value: ``get`` raises it."""
    return object_store.to_inline(serialize(error, out_of_band=False), is_error=True)


class DriverRefs:
    """RefTracker of the driver: queue every change; the core applies them in order.

    ObjectRefs die in any thread, even inside a GC pass of a thread that holds
    the lock, so a death only queues; whoever next holds the lock applies it.
    """

    def __init__(self, core: EngineCore) -> None:
        self.ops: deque[tuple[str, int]] = deque()
        self._core = core

    def add(self, object_id: str) -> None:
        self.ops.append((object_id, 1))

    def remove(self, object_id: str) -> None:
        self.ops.append((object_id, -1))
        self._core.try_drain()


class EngineCore:
    """State shared by the caller threads and the I/O thread, under one lock.

    In the driver's main thread, Ctrl-C waits while the lock is held
    (``interrupts.DEFERRED_SIGINT``), so it never leaves this state half changed.
    """

    def __init__(self, settings: config.ClusterSettings, output_handler: OutputHandler) -> None:
        self.settings = settings
        num_workers, store_memory = settings.num_workers, settings.store_memory
        self.cluster_id = secrets.token_hex(8)
        self.driver_pid = os.getpid()
        self.output_handler = output_handler
        self.lock = threading.Lock()
        self.sleepers = Sleepers(self.lock)  # callers waiting in get() / wait()
        self.scheduler = Scheduler(num_workers, self.is_ready, config.MAX_EXTRA_WORKERS,
                                   settings.resources)
        self.history = Timeline(config.TIMELINE_CAPACITY)
        self.records: dict[str, TaskRecord] = {}
        self.functions: dict[str, bytes] = {}  # function hash -> pickled function or class
        self.workers: dict[int, pool.WorkerProcess] = {}
        self.producers: dict[str, str] = {}  # object id -> id of the task making it
        self.task_pins: dict[str, list[str]] = {}
        # When each worker said it was ready (epoch seconds): charts mark the wait for it.
        self.worker_ready_at: dict[int, float] = {}
        self.actor_meta: dict[str, ActorOptions] = {}
        self.actor_names = ActorNames(settings.namespace, self.actor_alive)
        # Which notebook cell each task belongs to (output routing, timings, interrupts):
        # ``tag_source`` names the current cell; tasks started by tasks inherit their tag.
        self.tag_source: CellSource | None = None
        self.task_tags = TaskCells()
        self.cell_timelines = CellTimelines(2 * config.TIMELINE_CAPACITY)
        self.counts: Counter[str] = Counter()  # tasks by how they ended; workers started, died
        self.borrowed_refs: Borrowed[str] = Borrowed()  # refs workers hold, counted for them
        self.requests = RequestHandler(self)
        self.refs = DriverRefs(self)
        # Plain tasks a caller submitted in a burst, registered by whoever next holds the
        # lock (``drain``): every PUMP_EVERY of them that caller, or the I/O thread within
        # READER_GRACE of the burst's end.
        self.queued: deque[QueuedTask] = deque()
        self.batches = Batches()  # short tasks of a burst that run together
        self.closing = False
        self.closed = False
        self._unsettled = False  # runs ended whose freed work is not handed out yet (settle)
        self._corked: dict[int, list[Any]] | None = None  # sends held back (see cork)
        self._cork_depth = 0
        self._registry_version = registry.version
        with contextlib.ExitStack() as undo:  # a failure here leaves no file behind
            # Our files' names, and the lock that tells sweepers this driver is alive.
            self.space, self._space_lock = Space.create(self.driver_pid)
            undo.callback(os.close, self._space_lock)
            undo.callback(self.space.remove_all)
            self.memory = Memory(self.space, store_memory, self.try_drain)
            undo.callback(self.memory.close)
            self.store = self.memory.store
            self.io = IOLoop(self)
            undo.pop_all()  # from here on, shutdown() releases them

    @property
    def num_workers(self) -> int:
        """The pool's size (the scheduler's, so scaling has one source of truth)."""
        return self.scheduler.num_workers

    # -- references ------------------------------------------------------------------------

    def try_drain(self) -> None:
        if self.lock.acquire(blocking=False):
            try:
                self.drain()
            finally:
                self.lock.release()

    def drain(self) -> None:
        """Register queued submissions, then apply queued ObjectRef births and deaths (a
        result's ref may already have died), and arena views the driver let go."""
        ops = self.refs.ops
        if not (ops or self.queued or self.memory.views_closed):
            return
        with DEFERRED_SIGINT:  # a change taken off the queue is applied, even on Ctrl-C
            if self.queued:
                self.register_queued()
            while ops:
                object_id, change = ops.popleft()
                if change > 0:
                    self.store.add_refs(object_id, change)
                else:
                    self.forget(self.store.remove_refs(object_id, -change))
            self.memory.apply_closed_views()
            self.requests.retry_allocations()

    def add_worker_ref(self, worker_id: int, object_id: str) -> None:
        """A ref a worker holds, counted for it (given back if the worker dies)."""
        self.store.add_refs(object_id)
        self.borrowed_refs.add(worker_id, object_id)

    def forget(self, freed: list[str]) -> None:
        """Objects just freed; an actor whose last handle went is stopped."""
        for object_id in freed:
            self.producers.pop(object_id, None)
            if object_id in self.actor_meta:
                self._actor_released(object_id)

    def _actor_released(self, actor_id: str) -> None:
        self.actor_meta.pop(actor_id)
        self.actor_names.release(actor_id)
        self.execute(self.scheduler.release_actor(actor_id))

    def actor_alive(self, actor_id: str) -> bool:
        actor = self.scheduler.actors.get(actor_id)
        return actor is not None and actor.state != "dead" and actor_id in self.actor_meta

    def stop_actor(self, actor_id: str, no_restart: bool) -> None:
        """kill(): the actor stops now (lock held); with no_restart its name is free at once."""
        self.execute(self.scheduler.kill_actor(actor_id, no_restart=no_restart))
        options = self.actor_meta.get(actor_id)
        if no_restart:
            self.actor_names.release(actor_id)
        if no_restart and options is not None and options.detached:
            # Drop the detached actor's own reference: handles decide from now on.
            self.actor_meta[actor_id] = dataclasses.replace(options, detached=False)
            self.forget(self.store.remove_refs(actor_id))

    def named_actor_ref(self, name: str, namespace: str | None) -> str | None:
        """The id of the live actor with this name (lock held), or None."""
        return self.actor_names.lookup(name, namespace)

    def is_ready(self, object_id: str) -> bool:
        entry = self.store.entry(object_id)
        return entry is not None and entry.value is not None

    def lost_message(self, object_id: str) -> str:
        if self.closed:
            return (f"ObjectRef({object_id}) is gone: its cluster was shut down. "
                    f"Call init() and run the cells that create it again.")
        return (f"ObjectRef({object_id}) is gone: it was freed when no reference to it was "
                f"left (a ref kept only in a pickled or copied form is not counted). "
                f"Keep the ObjectRef in a variable while you need it, and create it again.")

    # -- tasks -------------------------------------------------------------------------------

    def register_task(self, spec: TaskSpec, contained: Sequence[str], args_id: str,
                      bytes_in: int, *, caller: str = "driver",
                      actor: ActorOptions | None = None) -> None:
        """Pin what the task needs, record it and hand it to the scheduler."""
        if contained or args_id:
            pins = list(contained)
            for object_id in pins:
                self.store.pin(object_id)
            if args_id:
                pins.append(args_id)  # pinned when it was stored
            self.task_pins[spec.task_id] = pins
        for return_id in spec.return_ids:
            self.producers[return_id] = spec.task_id
        record = self._record_new(spec, time.time(), bytes_in,
                                  self._tag(spec.task_id, caller), caller == "driver")
        self.history.add(record)
        self.counts["submitted"] += 1
        self._sync_registry()
        if actor is not None:
            self.actor_meta[spec.actor_id] = actor
            if actor.name:
                self.actor_names.register(actor, spec.actor_id)
            self.execute(self.scheduler.create_actor(
                spec, actor.class_name, actor.max_restarts, actor.max_task_retries,
                dict(actor.resources), max(actor.max_concurrency, 1)))
        else:
            self.execute(self.scheduler.submit(spec, caller))

    def _record_new(self, spec: TaskSpec, submitted: float, bytes_in: int, tag: str | None,
                    opens: bool) -> TaskRecord:
        """The record of a task just registered, filed under its cell (``tag``)."""
        record = TaskRecord(spec.task_id, spec.name, spec.kind, None, submitted, None, None,
                            "pending", bytes_in, 0, None)
        self.records[spec.task_id] = record
        if tag is not None:
            self.cell_timelines.add(tag, record, opens=opens)
        return record

    def _tag(self, task_id: str, caller: str) -> str | None:
        if caller.startswith("worker-"):
            parent = self.running_spec(int(caller.split("-", 1)[1]))
            tag = self.task_tags.get(parent.task_id) if parent is not None else None
        else:
            tag = self.tag_source() if self.tag_source is not None else None
        if tag is not None:
            self.task_tags.remember(task_id, tag)
        return tag

    def running_spec(self, worker_id: int,
                     process: pool.WorkerProcess | None = None) -> TaskSpec | None:
        """The task a worker runs now; in a batch, the member it says it is in."""
        spec = self.scheduler.running_task(worker_id)
        batch = self.batches.by_id.get(spec.task_id) if spec is not None and self.batches \
            else None
        if batch is None:
            return spec
        process = process or self.workers.get(worker_id)
        return batch.member_at(process.control.running()) if process is not None else None

    def register_queued(self) -> None:
        """Register the submissions a caller queued without the lock (lock held): all of a
        burst's at once, handed to the scheduler together, their runs sent to each worker
        in one write. They are plain tasks: nothing to pin, no resources, no actor."""
        queued = self.queued
        if self.closing:  # their refs report the cluster as shut down
            queued.clear()
            return
        functions, producers, expect = self.functions, self.producers, self.store.expect
        records = []
        grouper = Grouper(self.batches, self.scheduler.depth_of)
        while queued:
            task = queued.popleft()
            spec, function = task.spec, task.function
            if function.data and function.function_hash not in functions:
                functions[function.function_hash] = function.data
            for return_id in spec.return_ids:
                expect(return_id).refs = 1
                producers[return_id] = spec.task_id
            if task.cell is not None:
                self.task_tags.remember(spec.task_id, task.cell)
            records.append(self._record_new(spec, task.submitted, task.nbytes, task.cell, True))
            grouper.add(spec, task.cell)
        grouper.finish()
        self.history.extend(records)
        self.counts["submitted"] += len(records)
        self._sync_registry()
        self.cork()
        try:
            self.execute(self.scheduler.submit_plain(grouper.specs, grouper.sizes))
        finally:
            self.uncork()

    def tasks_tagged(self, tag: str) -> list[str]:
        """Ids of the tasks of one cell that have not finished yet."""
        tracked, members = self.scheduler.tasks, self.batches.of_member
        return [t for t in self.task_tags.tasks_of(tag) if t in tracked or t in members]

    def is_unfinished(self, task_id: str) -> bool:
        return task_id in self.scheduler.tasks or task_id in self.batches.of_member

    def cancel_run(self, task_id: str, force: bool) -> list[Instruction]:
        """What cancelling one task takes (a batch's member: see ``_cancel_member``)."""
        if task_id in self.batches.of_member:
            return self._cancel_member(task_id, force)
        return self.scheduler.cancel(task_id, force=force)

    def cancel_all(self, task_ids: Sequence[str], force: bool) -> None:
        """Cancel many tasks (a cell's): a batch whose members are among them is cancelled
        as one run (one interrupt for all its members)."""
        whole: dict[str, None] = {}
        wanted = set(task_ids)
        for task_id in task_ids:
            batch = self.batches.of(task_id) if self.batches else None
            if batch is None:
                self.execute(self.scheduler.cancel(task_id, force=force))
            elif batch.pending.keys() <= wanted:
                whole[batch.spec.task_id] = None
            else:
                self.execute(self._cancel_member(task_id, force))
        for batch_id in whole:
            self.execute(self.scheduler.cancel(batch_id, force=force))

    def _cancel_member(self, member_id: str, force: bool) -> list[Instruction]:
        """A task that runs in a batch: if the batch is queued, it leaves it, cancelled;
        if it was sent, its own run is marked (and interrupted, if it is the one running:
        by SIGINT, or with ``force`` by ending the worker, as for a task of its own)."""
        batch = self.batches.of(member_id)
        if batch is None:
            return []
        if self.scheduler.run_of(batch.spec.task_id) is None:  # still queued
            member = self.batches.member_ended(batch, member_id)
            out = self._cancelled(member, "the task was cancelled before it ran") if member else []
            if not batch.pending:
                out += self.scheduler.cancel(batch.spec.task_id, force=False)
            return out
        seq = next(s for s in batch.member_seqs(pending_only=False)
                   if batch.member_at(s).task_id == member_id)  # type: ignore[union-attr]
        process = self.workers.get(self.scheduler.tasks[batch.spec.task_id].worker_id or 0)
        if process is None or process.closed:
            return []
        if force and process.control.running() == seq:
            member = self.batches.member_ended(batch, member_id)
            out = self._cancelled(member, "the task was cancelled") if member else []
            return [*out, KillWorker(process.worker_id)]
        process.interrupt(seq)
        return []

    def _cancelled(self, spec: TaskSpec, why: str) -> list[Instruction]:
        error = TaskCancelledError(f"{spec.name} was cancelled ({why}); its result will never "
                                   f"exist")
        return self.complete(spec, [self.error_value(error) for _ in spec.return_ids],
                             "cancelled", str(error))

    def complete(self, spec: TaskSpec, values: Sequence[Value], status: str,
                 error: str | None = None, started: float | None = None,
                 finished: float | None = None) -> list[Instruction]:
        """Store a task's results, release what it pinned, wake whoever waits."""
        out: list[Instruction] = []
        bytes_out = 0
        for return_id, value in zip(spec.return_ids, values):
            bytes_out += value.nbytes
            freed = self.store.seal(return_id, value)
            if freed:
                self.forget(freed)
            if type(value) is SharedValue:  # a large result: remember who made it
                self._made_by(return_id, spec.name, self.task_tags.get(spec.task_id))
            self.producers.pop(return_id, None)
            if self.scheduler.awaited(return_id):
                out.extend(self.scheduler.object_ready(return_id))
        pins = self.task_pins.pop(spec.task_id, [])
        if spec.kind == "actor_create" and spec.actor_id in self.actor_meta:
            self.forget(self.store.hold_until_freed(spec.actor_id, pins))  # for a restart
        elif pins:
            self.forget(self.store.unpin_all(pins))
        self.counts[status] += 1
        record = self.records.pop(spec.task_id, None)
        if record is not None:
            record.status = status  # type: ignore[assignment]
            record.started = started if started is not None else record.started
            record.finished = finished if finished is not None else time.time()
            record.bytes_out = bytes_out
            record.error = error
        self.requests.objects_ready(spec.return_ids)
        if status == "finished":
            self.sleepers.ready(spec.return_ids)
        else:  # a get of many objects raises this error as soon as it is in (as Ray)
            self.sleepers.wake_all()
        return out

    def adopt(self, worker_id: int, value: Value) -> Value:
        """A value a worker sent (lock held): accepted and counted, or an error value
        that says why not (the store is full, or the worker named room it was not lent).
        """
        try:
            accepted = self.memory.accept(worker_id, value)
        except ObjectStoreFullError as exc:
            return self.error_value(exc)
        if accepted is None:
            return self.error_value(DistkernelError(
                f"worker {worker_id} sent a value that does not name shared memory the driver "
                f"set aside for it; the value was refused (nothing was read or deleted)"))
        return accepted

    def error_value(self, error: BaseException) -> InlineValue:
        """An error to store as an object's value, counted even when the store is full."""
        value = _as_value(error)
        self.memory.force_reserve(value.nbytes)
        return value

    def _fail(self, step: FailTask) -> list[Instruction]:
        spec = step.spec
        if step.reason == "cancelled":
            error: BaseException = TaskCancelledError(
                f"{spec.name} was cancelled ({step.message}); its result will never exist")
        elif step.reason == "actor_died":
            error = actor_gone(spec.name, step.message)
        elif step.reason == "infeasible":
            error = DistkernelError(f"{step.message}. Ask for less, or start the cluster with "
                                    f"more (see init's num_cpus, num_gpus and resources).")
        else:
            retries = spec.max_retries
            tried = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
            error = WorkerCrashedError(
                f"{step.message}{tried}. The pool replaced the worker and keeps working; "
                f"if the task itself crashes the process (a segfault, os._exit, running out of "
                f"memory), fix it or give it more memory.")
        status = "cancelled" if step.reason == "cancelled" else "failed"
        batch = self.batches.by_id.get(spec.task_id) if self.batches else None
        if batch is None:
            values = [self.error_value(error) for _ in spec.return_ids]
            return self.complete(spec, values, status=status, error=str(error))
        self.batches.over(batch)  # each member ends as a task of its own would
        out: list[Instruction] = []
        for member in batch.pending.values():
            values = [self.error_value(error) for _ in member.return_ids]
            out += self.complete(member, values, status=status, error=str(error))
        return out

    # -- instructions ------------------------------------------------------------------------

    def execute(self, instructions: list[Instruction]) -> None:
        """Carry out scheduler instructions; some produce more."""
        if not instructions:
            return
        work = deque(instructions)
        while work:
            step = work.popleft()
            if isinstance(step, Dispatch):
                self._dispatch(step)
            elif isinstance(step, FailTask):
                work.extend(self._fail(step))
            elif isinstance(step, StartWorker):
                self._start_worker(step.extra, step.actor_id)
            elif isinstance(step, StopWorker):
                self.send(step.worker_id, Stop())
            elif isinstance(step, (InterruptWorker, Revoke, KillWorker)):
                process = self.workers.get(step.worker_id)
                if process is None or process.closed:
                    continue
                if isinstance(step, InterruptWorker):  # no message: a busy worker reads none
                    batch = self.batches.by_seq.get(step.seq) if self.batches else None
                    if batch is None:
                        process.interrupt(step.seq)
                    else:
                        process.interrupt(*batch.member_seqs(pending_only=True))
                elif isinstance(step, Revoke):
                    process.revoke(self._member_seqs(step.seqs))
                else:
                    pool.kill(process)

    def send(self, worker_id: int, message: Any) -> None:
        """To one worker, now; or, while corked, with the others for it at ``uncork``."""
        if self._corked is not None:
            self._corked.setdefault(worker_id, []).append(message)
            return
        process = self.workers.get(worker_id)
        if process is None or process.closed:
            return
        try:
            process.send(message)
        except OSError:
            pass  # it died: the reader sees the sentinel and handles it

    def cork(self) -> None:
        """Hold sends until ``uncork`` (lock held): a pass over many results then sends each
        worker its next runs in one write, not one per run."""
        self._cork_depth += 1
        self.hold_sends()

    def uncork(self) -> None:
        self._cork_depth -= 1
        self.flush_held()

    def hold_sends(self) -> None:
        """Hold sends past this call (lock held): a caller submitting in a burst. Whoever
        reads the sockets next sends them (``flush_held``), within READER_GRACE."""
        if self._corked is None:
            self._corked = {}

    def flush_held(self) -> None:
        """Send what is held, each worker's messages in one write (lock held)."""
        if self._cork_depth or self._corked is None:
            return
        corked, self._corked = self._corked, None
        for worker_id, messages in corked.items():
            process = self.workers.get(worker_id)
            if process is None or process.closed:
                continue
            try:
                process.send_many(messages)
            except OSError:
                pass  # as in send

    def _start_worker(self, extra: bool, actor_id: str) -> None:
        if self.closing:
            return
        worker_id = self.scheduler.add_worker(extra=extra, actor_id=actor_id)
        self.counts["workers_started"] += 1
        process = pool.start_worker(worker_id, self.space, self.cluster_id, registry.dump(),
                                    self.settings.worker_env, self.settings.working_dir)
        self.workers[worker_id] = process
        self.io.watch(process)

    def _member_seqs(self, seqs: tuple[int, ...]) -> tuple[int, ...]:
        """Runs' seqs, each batch's standing for those of all its members."""
        if not self.batches:
            return seqs
        found: list[int] = []
        for seq in seqs:
            batch = self.batches.by_seq.get(seq)
            found.extend(batch.member_seqs(pending_only=False) if batch else (seq,))
        return tuple(found)

    def _function_for(self, process: pool.WorkerProcess, function_hash: str) -> bytes | None:
        """The pickled function, the first time this worker runs it."""
        if not function_hash or function_hash in process.functions:
            return None
        process.functions.add(function_hash)
        return self.functions.get(function_hash)

    def _dispatch_batch(self, step: Dispatch, batch: Batch) -> None:
        process = self.workers[step.worker_id]
        members = self.batches.sent(batch, step.seq)
        template = members[0] if members else batch.spec
        starts_now = self.scheduler.workers[step.worker_id].running == step.seq
        for index, member in enumerate(members):
            record = self.records.get(member.task_id)
            if record is not None:
                record.worker_id, record.status = step.worker_id, "running"
                if index == 0 and starts_now and record.started is None:
                    record.started = time.time()
        self.counts["batched"] += len(members)
        self.send(step.worker_id, RunBatch(
            step.seq, template, tuple((m.task_id, m.args, m.return_ids) for m in members),
            self._function_for(process, template.function_hash),
            self.scheduler.lightly_loaded()))

    def _dispatch(self, step: Dispatch) -> None:
        spec = step.spec
        batch = self.batches.by_id.get(spec.task_id) if self.batches else None
        if batch is not None:
            self._dispatch_batch(step, batch)
            return
        process = self.workers[step.worker_id]
        resolved = tuple((i, self.store.value(i)) for i in spec.top_level_refs) \
            if spec.top_level_refs else ()
        function = self._function_for(process, spec.function_hash)
        record = self.records.get(spec.task_id)
        if record is not None and record.started is None and \
                self.scheduler.workers[step.worker_id].running == step.seq:
            record.started = time.time()  # the worker begins it now (see _on_task_done)
        if record is not None:
            record.worker_id = step.worker_id
            record.status = "running"
            if resolved:
                record.bytes_in += sum(v.nbytes for _, v in resolved if v is not None)
        if resolved or type(spec.args) is SharedValue:  # shared memory goes along: hold it
            for object_id in spec.top_level_refs:
                self.store.touch(object_id)
            self.memory.sent.hold(step.worker_id, step.seq,
                                  (spec.args, *(v for _, v in resolved)))
        actor = self.actor_meta.get(spec.actor_id) if spec.kind == "actor_create" else None
        self.send(step.worker_id, RunTask(step.seq, spec, resolved, function,  # type: ignore[arg-type]
                                          self.scheduler.lightly_loaded(), step.gpu_ids,
                                          actor))

    def _sync_registry(self) -> None:
        """Ship the serializer registry to every worker when it changed."""
        if registry.version == self._registry_version:
            return
        self._registry_version = registry.version
        message = SetSerializers(registry.dump())
        for worker_id in list(self.workers):
            self.send(worker_id, message)

    # -- worker messages (the reader) ----------------------------------------------------------

    def handle(self, worker_id: int, message: Any, *, settle_later: bool = False) -> None:
        """One message from a worker. ``settle_later``: it is one of several read at once,
        and the reader calls ``settle`` after the last, so that runs which ended hand out
        their successors in one pass instead of one pass each."""
        self._handle(worker_id, message, settle_later)
        if self.requests.waiting:  # what the message did may have freed memory for them
            self.requests.retry_allocations()

    def settle(self) -> None:
        """Hand out the work that runs ended by ``handle(..., settle_later=True)`` freed."""
        if self._unsettled:
            self._unsettled = False
            self.execute(self.scheduler.dispatch())

    def _handle(self, worker_id: int, message: Any, settle_later: bool = False) -> None:
        if isinstance(message, TaskDone):
            self._on_task_done(worker_id, message, settle_later)
        elif isinstance(message, BatchDone):
            self._on_batch_done(worker_id, message, settle_later)
        elif isinstance(message, RefDelta):
            self.memory.views_reported(worker_id, message.views_opened, ())
            for object_id in message.added:
                self.add_worker_ref(worker_id, object_id)
            for object_id in message.removed:
                self.borrowed_refs.add(worker_id, object_id, -1)
                self.forget(self.store.remove_refs(object_id))
            self.memory.views_reported(worker_id, (), message.views_closed)
        elif isinstance(message, Request):
            self.execute(self.requests.handle(worker_id, message))
        elif isinstance(message, WorkerReady):
            self.worker_ready_at[worker_id] = time.time()
            self.execute(self.scheduler.worker_ready(worker_id))

    def _on_task_done(self, worker_id: int, done: TaskDone, settle_later: bool) -> None:
        scheduler = self.scheduler
        spec = scheduler.task_of_run(done.seq)
        ran = done.finished - done.started if not (done.failed or done.cancelled) else None
        if self.memory.sent.holding(worker_id):
            self._release_sent(worker_id, done.seq)
        results = [self.adopt(worker_id, value) for value in done.results]
        retry = done.failed and spec is not None and self._retry_on(spec, results) and \
            scheduler.retries_left(done.seq) > 0
        out = scheduler.task_done(worker_id, done.seq, ran, retry=retry,
                                  dispatch=not settle_later)
        if settle_later:
            self._unsettled = True
        self._next_run_starts(worker_id, done.finished)
        if done.actor_exited and spec is not None:
            out.extend(self.scheduler.kill_actor(spec.actor_id,
                                                 reason=actor_exit_reason(spec.name)))
        if spec is None or retry:  # taken back, failed already, or to run again: not needed
            for value in results:
                self.store.discard(value)
        else:
            out.extend(self._ended(spec, results, done.failed, done.cancelled, done.started,
                                   done.finished))
        self.execute(out)

    def _next_run_starts(self, worker_id: int, at: float) -> None:
        """A run sent ahead starts now. Until the worker says exactly when it started and
        ended, this is what the panel and a running task's chart show."""
        following = self.scheduler.running_task(worker_id)
        record = self.records.get(following.task_id) if following is not None else None
        if record is not None and record.started is None:
            record.started = at

    def _ended(self, spec: TaskSpec, results: list[Value], failed: bool, cancelled: bool,
               started: float, finished: float) -> list[Instruction]:
        """Store what a run of ``spec`` that ended sent back, as its results or its error."""
        if cancelled:
            error = TaskCancelledError(f"{spec.name} was cancelled while it ran")
            return self.complete(spec, [self.error_value(error) for _ in spec.return_ids],
                                 "cancelled", str(error), started, finished)
        if not failed and len(results) == len(spec.return_ids):
            return self.complete(spec, results, "finished", None, started, finished)
        values = results[:1] or [self.error_value(DistkernelError(
            f"{spec.name}: the worker sent {len(results)} results for "
            f"{len(spec.return_ids)} return values"))]
        text = _error_summary(values[0])
        values += [self.error_value_copy(values[0]) for _ in spec.return_ids[1:]]
        out = self.scheduler.actor_creation_failed(spec.actor_id, f"its constructor raised "
                                                                  f"{text}") \
            if spec.kind == "actor_create" else []
        return out + self.complete(spec, values, "failed", text, started, finished)

    def _on_batch_done(self, worker_id: int, done: BatchDone, settle_later: bool) -> None:
        """Members of a batch ended; each is stored as a task of its own. A report of a run
        taken back or ended already (its worker died) is dropped."""
        spec = self.scheduler.task_of_run(done.seq)
        batch = self.batches.by_id.get(spec.task_id) if spec is not None else None
        out: list[Instruction] = []
        for index, results, started, finished, failed, cancelled in done.members:
            values = [self.adopt(worker_id, value) for value in results]
            member = batch.sent[index] if batch is not None and index < len(batch.sent) else None
            if member is None or self.batches.member_ended(batch, member.task_id) is None:  # type: ignore[arg-type]
                for value in values:
                    self.store.discard(value)
                continue
            if not (failed or cancelled):
                batch.ran += finished - started  # type: ignore[union-attr]
                batch.ran_count += 1  # type: ignore[union-attr]
            out += self._ended(member, values, failed, cancelled, started, finished)
        if done.last and batch is not None:
            self.batches.over(batch)
            for member in batch.pending.values():  # never reported: the worker lost it
                error = DistkernelError(f"{member.name}: its worker ended the batch it was "
                                        f"sent in without running it; submit it again")
                out += self.complete(member, [self.error_value(error) for _ in
                                              member.return_ids], "failed", str(error))
            if batch.ran_count:  # failed or cancelled runs teach no duration
                self.scheduler.note_duration(batch.sent[0].function_hash,
                                             batch.ran / batch.ran_count)
            if self.memory.sent.holding(worker_id):
                self._release_sent(worker_id, done.seq + len(batch.sent) - 1)
            out += self.scheduler.task_done(worker_id, done.seq,
                                            batch.ran if batch.ran_count else None,
                                            dispatch=not settle_later)
            if settle_later:
                self._unsettled = True
            self._next_run_starts(worker_id, done.members[-1][3] if done.members else time.time())
        self.execute(out)

    def _made_by(self, object_id: str, what: str, cell: str | None) -> None:
        entry = self.store.entry(object_id)
        if entry is not None:
            entry.made_by, entry.cell = what, cell

    def _retry_on(self, spec: TaskSpec, results: Sequence[Value]) -> bool:
        """retry_exceptions: whether the exception a task raised is one to run it again for."""
        if not spec.retry_exceptions or not results or not isinstance(results[0], InlineValue):
            return False
        if spec.retry_exceptions is True:
            return True
        try:
            kinds = specs.exception_kinds(spec.retry_exceptions)  # type: ignore[arg-type]
            error = object_store.load(results[0])
        except Exception:  # noqa: BLE001 - cannot tell: do not retry
            return False
        return isinstance(getattr(error, "cause", None), kinds)

    def _release_sent(self, worker_id: int, seq: int) -> None:
        """What went to a worker with run ``seq`` is no longer held for it (there is some).
        An actor running calls at once ends them in any order: its regions are held until
        it is idle."""
        state = self.scheduler.workers.get(worker_id)
        options = self.actor_meta.get(state.actor_id) if state and state.actor_id else None
        if options is None or not (options.is_async or options.max_concurrency > 1 or
                                   options.concurrency_groups):
            self.memory.sent.run_over(worker_id, seq)
        elif state is not None and list(state.assigned) == [seq]:
            self.memory.sent.worker_gone(worker_id)

    def error_value_copy(self, value: Value) -> Value:
        """The same error stored once more (one per return value), counted as such."""
        if isinstance(value, SharedValue):
            return self.error_value(DistkernelError("the task failed; see its first result"))
        self.memory.force_reserve(value.nbytes)
        return value

    def _take_innocent_members(self, worker_id: int, running: TaskSpec | None) -> list[TaskSpec]:
        """A worker in a batch died: the member it was in (``running``) stays in the batch,
        which the scheduler retries or fails as it would a task; the others did not end it,
        so they are taken out, to be queued again as tasks of their own without using a
        retry (those that ended lost their results with the process)."""
        spec = self.scheduler.running_task(worker_id)
        batch = self.batches.by_id.get(spec.task_id) if spec is not None and self.batches \
            else None
        if batch is None or self.scheduler.tasks[spec.task_id].cancel_requested:  # type: ignore[union-attr]
            return []  # cancelled with its batch, not run again
        others = [m for m in batch.sent if m is not running and m.task_id in batch.pending]
        for member in others:
            self.batches.member_ended(batch, member.task_id)
        return others

    def on_exit(self, worker_id: int) -> None:
        """A worker's process ended: expected (stopped) or not (crashed, killed)."""
        process = self.workers.pop(worker_id, None)
        if process is None:
            return
        self.io.unwatch(process)
        self.worker_ready_at.pop(worker_id, None)
        code = process.exit_code(timeout=2.0)
        state = self.scheduler.workers.get(worker_id)
        spec = self.running_spec(worker_id, process)
        innocent = self._take_innocent_members(worker_id, spec)
        process.close()
        self.memory.worker_gone(worker_id)  # what it was writing or reading is given back
        for object_id, count in self.borrowed_refs.worker_gone(worker_id).items():
            self.forget(self.store.remove_refs(object_id, count))
        self.requests.worker_gone(worker_id)
        if state is not None and state.state == "stopping" and not state.assigned:
            stopped = self.scheduler.worker_stopped(worker_id)
            self.execute(stopped if not self.closing else [])
            return
        self.counts["workers_died"] += 1
        what = f"while running {spec.name} (task {spec.task_id})" if spec else "while idle"
        describe = (f"worker {worker_id} (pid {process.pid}) died with {describe_exit(code)} "
                    f"{what}")
        self.execute(self.scheduler.worker_died(worker_id, describe))
        if innocent:
            self.execute(self.scheduler.submit_plain(innocent))


@functools.lru_cache(maxsize=256)
def _error_summary(value: Value) -> str:
    try:
        error = object_store.load(value)
        return f"{type(error.cause).__name__}: {error.cause}" if error.cause else str(error)
    except Exception:  # noqa: BLE001 - a summary only; get() reports the full error
        return "the task raised an error"
