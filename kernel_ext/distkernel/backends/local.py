"""The local engine: a worker pool and a shared-memory object store in this process.

::

    caller threads (notebook)          I/O thread                      workers
    put / get / submit / cancel        select(): socketpairs,          python -m
        │   take the one lock,         pidfds, a wake-up pipe          distkernel.worker
        │   send RunTask directly ───────────────────────────────────▶ run the task
        │                              ◀── TaskDone / Output / Request ─┘
        └─ get waits on a Condition ◀─ seal results, notify, dispatch

One lock guards the store, the scheduler and the worker table. Sends happen
under it; they cannot block for long because every worker drains its socket
from a dedicated reader thread. Bulk copies into shared memory and
unpickling happen outside it. ObjectRef deaths are queued and applied by
whoever next holds the lock (they may fire in any thread, inside a GC pass).
"""

from __future__ import annotations

import os
import pickle
import secrets
import selectors
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from distkernel import config, object_store, pool, reaper, refs, specs
from distkernel.backends.local_requests import RequestHandler
from distkernel.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    TaskCancelledError,
    WorkerCrashedError,
    describe_exit,
)
from distkernel.object_store import ObjectStore
from distkernel.protocol import (
    FunctionPayload,
    InlineValue,
    Output,
    RefDelta,
    Request,
    RunTask,
    SetSerializers,
    Stop,
    TaskDone,
    TaskOptions,
    TaskSpec,
    Value,
    WorkerReady,
)
from distkernel.refs import ObjectRef
from distkernel.scheduler import (
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
from distkernel.serialization import registry, serialize
from distkernel.timings import TaskRecord, Timeline

OutputHandler = Callable[[int, str, str, str], None]  # worker id, task id, stream, text


def error_value(error: BaseException) -> InlineValue:
    """An exception stored as an object's value: ``get`` raises it."""
    return object_store.to_inline(serialize(error, out_of_band=False), is_error=True)


class _DriverRefs:
    """RefTracker of the driver: queue every change; apply them under the lock, in order."""

    def __init__(self, backend: LocalBackend) -> None:
        self.ops: deque[tuple[str, int]] = deque()
        self._backend = backend

    def add(self, object_id: str) -> None:
        self.ops.append((object_id, 1))

    def remove(self, object_id: str) -> None:
        self.ops.append((object_id, -1))
        self._backend.try_drain()


class LocalBackend:
    """Workers, store, scheduler and the I/O thread that ties them together."""

    name = "local"

    def __init__(self, num_workers: int, store_memory: int,
                 output_handler: OutputHandler | None = None) -> None:
        self.cluster_id = secrets.token_hex(8)
        self.driver_pid = os.getpid()
        self.num_workers = num_workers
        self.output_handler = output_handler or print_output
        self.started_at = time.time()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.store = ObjectStore(store_memory, self.driver_pid)
        self.scheduler = Scheduler(num_workers, self._is_ready, config.MAX_EXTRA_WORKERS)
        self.timeline = Timeline(config.TIMELINE_CAPACITY)
        self.records: dict[str, TaskRecord] = {}
        self.functions: dict[str, bytes] = {}
        self.workers: dict[int, pool.WorkerProcess] = {}
        self.worker_prefixes: dict[int, str] = {}
        self.producers: dict[str, str] = {}  # object id -> task id making it
        self.task_pins: dict[str, list[str]] = {}
        self.requests = RequestHandler(self)
        self._refs = _DriverRefs(self)
        self._registry_version = registry.version
        self._closing = False
        self._closed = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", 0))
        self._to_register: list[pool.WorkerProcess] = []
        reaper.sweep_dead_drivers()
        refs.set_tracker(self._refs)
        self._io_thread = threading.Thread(target=self._io_loop, name="distkernel-io", daemon=True)
        with self.lock:
            self.execute(self.scheduler.start())
        self._io_thread.start()

    # -- public operations --------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        serialized = serialize(value)
        object_id = refs.new_id()
        return ObjectRef.counted(self._store_new(serialized, object_id, refs=1), self.cluster_id)

    def _store_new(self, serialized: Any, object_id: str, *, refs: int = 0, pins: int = 0) -> str:
        """Reserve, copy (outside the lock) and register a new object."""
        size = self._size_of(serialized)
        with self.lock:
            self.drain()
            self._check_refs_alive(serialized.contained)
            self.store.reserve(size)
        try:
            value = object_store.pack(serialized, self.driver_pid, object_id)
        except BaseException:
            with self.lock:
                self.store.release(size)
            raise
        with self.lock:
            entry = self.store.expect(object_id)
            entry.refs += refs
            entry.pins += pins
            self.store.seal(object_id, value, size)
        return object_id

    @staticmethod
    def _size_of(serialized: Any) -> int:
        if serialized.nbytes < config.INLINE_THRESHOLD:
            return serialized.nbytes
        return object_store.layout(serialized)[0]

    def get(self, object_refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        ids = [self._own_id(r) for r in object_refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            self.drain()
            while True:
                pending = self._pending_ids(ids)
                if not pending:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise GetTimeoutError(self._timeout_message(pending, len(ids), timeout))
                self.changed.wait(remaining)
                self.drain()
            items = [(self.store.value(i), self.store.view(i)) for i in ids]
        results = []
        for value, view in items:
            result = object_store.load(value, view)  # type: ignore[arg-type]
            if value.is_error:  # type: ignore[union-attr]
                raise result
            results.append(result)
        return results

    def wait(self, object_refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ids = [self._own_id(r) for r in object_refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            self.drain()
            while True:
                ready = [i for i in ids if self._is_ready(i) or i not in self.store]
                remaining = None if deadline is None else deadline - time.monotonic()
                if len(ready) >= num_returns or (remaining is not None and remaining <= 0):
                    break
                self.changed.wait(remaining)
                self.drain()
        chosen = set(ready[:num_returns])
        return ([r for r in object_refs if r.hex() in chosen],
                [r for r in object_refs if r.hex() not in chosen])

    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, kind: str = "task") -> list[ObjectRef]:
        serialized = specs.serialize_arguments(args, kwargs, f"{function.name}.remote(...)")
        args_value, args_id = self._arguments_value(serialized)
        spec = specs.make_spec(function, options, args_value,
                               specs.top_level_refs(args, kwargs), kind=kind)
        with self.lock:
            self.drain()
            try:
                self._check_refs_alive(serialized.contained)
            except ObjectLostError:
                if args_id:
                    self.store.unpin(args_id)
                raise
            self.functions.setdefault(function.function_hash, function.data)
            for return_id in spec.return_ids:
                self.store.expect(return_id).refs = 1
            self.register_task(spec, serialized.contained, args_id, serialized.nbytes)
        return [ObjectRef.counted(i, self.cluster_id) for i in spec.return_ids]

    def _arguments_value(self, serialized: Any) -> tuple[Value, str]:
        """Small arguments travel in the message; large ones go through the store, once."""
        if serialized.nbytes < config.INLINE_THRESHOLD:
            return object_store.to_inline(serialized), ""
        args_id = refs.new_id()
        self._store_new(serialized, args_id, pins=1)
        with self.lock:
            value = self.store.value(args_id)
        return value, args_id  # type: ignore[return-value]

    def register_task(self, spec: TaskSpec, contained: Sequence[str], args_id: str,
                      bytes_in: int) -> None:
        """Pin what the task needs, record it and hand it to the scheduler (lock held)."""
        pins = list(contained)
        for object_id in pins:
            self.store.pin(object_id)
        if args_id:
            pins.append(args_id)  # pinned when it was stored
        self.task_pins[spec.task_id] = pins
        for return_id in spec.return_ids:
            self.producers[return_id] = spec.task_id
        record = TaskRecord(spec.task_id, spec.name, spec.kind, None, time.time(), None, None,
                            "pending", bytes_in, 0, None)
        self.records[spec.task_id] = record
        self.timeline.add(record)
        self._sync_registry()
        self.execute(self.scheduler.submit(spec))

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        object_id = self._own_id(ref)
        with self.lock:
            self.drain()
            task_id = self.producers.get(object_id)
            if task_id is not None:
                self.execute(self.scheduler.cancel(task_id, force=force))

    def cancel_tasks(self, task_ids: Sequence[str], force: bool = False) -> None:
        with self.lock:
            for task_id in task_ids:
                self.execute(self.scheduler.cancel(task_id, force=force))

    def resize(self, num_workers: int) -> None:
        with self.lock:
            self.num_workers = num_workers
            self.execute(self.scheduler.resize(num_workers))

    def status(self) -> dict[str, Any]:
        with self.lock:
            self.drain()
            rows = []
            for worker_id, state in sorted(self.scheduler.workers.items()):
                spec = self.scheduler.running_task(worker_id)
                process = self.workers.get(worker_id)
                pid = state.pid or (process.pid if process is not None else None)
                rows.append({"id": worker_id, "pid": pid, "state": state.state,
                             "current_task": spec.name if spec else None,
                             "current_task_id": spec.task_id if spec else None,
                             "extra": state.extra, "_process": process})
            store = self.store.stats()
            queued = len(self.scheduler.queue)
        for row in rows:
            row["cpu_percent"], row["rss"] = _process_stats(row.pop("_process"))
        return {"backend": self.name, "cluster_id": self.cluster_id, "num_workers": self.num_workers,
                "workers": rows, "object_store": store, "queued_tasks": queued}

    # -- the lock-held core -------------------------------------------------------------------

    def try_drain(self) -> None:
        if self.lock.acquire(blocking=False):
            try:
                self.drain()
            finally:
                self.lock.release()

    def drain(self) -> None:
        """Apply queued ObjectRef births and deaths (lock held)."""
        ops = self._refs.ops
        while ops:
            object_id, change = ops.popleft()
            if change > 0:
                self.store.add_refs(object_id, change)
            else:
                self.forget(self.store.remove_refs(object_id, -change))

    def forget(self, freed: list[str]) -> None:
        for object_id in freed:
            self.producers.pop(object_id, None)

    def _is_ready(self, object_id: str) -> bool:
        entry = self.store.entry(object_id)
        return entry is not None and entry.value is not None

    def _pending_ids(self, ids: Sequence[str]) -> list[str]:
        pending = []
        for object_id in ids:
            entry = self.store.entry(object_id)
            if entry is None:
                raise ObjectLostError(self._lost_message(object_id))
            if entry.value is None:
                pending.append(object_id)
        return pending

    def _own_id(self, ref: ObjectRef) -> str:
        if not isinstance(ref, ObjectRef):
            msg = f"expected an ObjectRef (what .remote() and put() return), got {type(ref).__name__}"
            raise TypeError(msg)
        if ref.cluster_id != self.cluster_id:
            msg = (f"{ref!r} belongs to a cluster that was shut down or restarted, so its value "
                   f"is gone. Run the cell that created it again.")
            raise ObjectLostError(msg)
        return ref.hex()

    def _check_refs_alive(self, object_ids: Sequence[str]) -> None:
        for object_id in object_ids:
            if object_id not in self.store:
                raise ObjectLostError(self._lost_message(object_id))

    def _lost_message(self, object_id: str) -> str:
        if self._closed:
            return (f"ObjectRef({object_id}) is gone: its cluster was shut down. "
                    f"Call init() and run the cells that create it again.")
        return (f"ObjectRef({object_id}) is gone: it was freed when no reference to it was "
                f"left (a ref kept only in a pickled or copied form is not counted). "
                f"Keep the ObjectRef in a variable while you need it, and create it again.")

    def _timeout_message(self, pending: list[str], total: int, timeout: float | None) -> str:
        names = {self.records[t].name for i in pending
                 if (t := self.producers.get(i)) and t in self.records}
        what = f" (from {', '.join(sorted(names))})" if names else ""
        return (f"get() timed out after {timeout} s: {len(pending)} of {total} objects not "
                f"ready{what}. The tasks keep running: call get() again later, raise the "
                f"timeout, or cancel() them.")

    def _sync_registry(self) -> None:
        """Ship the serializer registry to every worker when it changed (lock held)."""
        if registry.version == self._registry_version:
            return
        self._registry_version = registry.version
        message = SetSerializers(registry.dump())
        for worker_id in list(self.workers):
            self.send(worker_id, message)

    def send(self, worker_id: int, message: Any) -> None:
        process = self.workers.get(worker_id)
        if process is None or process.closed:
            return
        try:
            process.conn.send_bytes(pickle.dumps(message, protocol=5))
        except OSError:
            pass  # it died: the I/O thread sees the sentinel and handles it

    def execute(self, instructions: list[Instruction]) -> None:
        """Carry out scheduler instructions (lock held); some produce more."""
        work = deque(instructions)
        while work:
            step = work.popleft()
            if isinstance(step, Dispatch):
                self._dispatch(step)
            elif isinstance(step, FailTask):
                work.extend(self._fail(step))
            elif isinstance(step, StartWorker):
                self._start_worker(step.extra)
            elif isinstance(step, StopWorker):
                self.send(step.worker_id, Stop())
            elif isinstance(step, InterruptWorker):
                self.send(step.worker_id, ("cancel", (step.seq,)))
            elif isinstance(step, Revoke):
                self.send(step.worker_id, ("revoke", step.seqs))
            elif isinstance(step, KillWorker):
                process = self.workers.get(step.worker_id)
                if process is not None:
                    pool.kill(process)

    def _start_worker(self, extra: bool) -> None:
        if self._closing:
            return
        worker_id = self.scheduler.add_worker(extra=extra)
        process = pool.start_worker(worker_id, self.driver_pid, self.cluster_id, registry.dump())
        self.workers[worker_id] = process
        self._to_register.append(process)
        os.write(self._wake_w, b"w")

    def _dispatch(self, step: Dispatch) -> None:
        spec = step.spec
        process = self.workers[step.worker_id]
        resolved = tuple((i, self.store.value(i)) for i in spec.top_level_refs)
        function = None
        if spec.function_hash not in process.functions:
            function = self.functions.get(spec.function_hash)
            process.functions.add(spec.function_hash)
        record = self.records.get(spec.task_id)
        if record is not None:
            record.worker_id = step.worker_id
            record.status = "running"
            record.bytes_in += sum(v.nbytes for _, v in resolved if v is not None)
        self.send(step.worker_id, RunTask(step.seq, spec, resolved, function))  # type: ignore[arg-type]

    def _fail(self, step: FailTask) -> list[Instruction]:
        if step.reason == "cancelled":
            error: BaseException = TaskCancelledError(
                f"{step.spec.name} was cancelled ({step.message}); its result will never exist")
        else:
            retries = step.spec.max_retries
            tried = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
            error = WorkerCrashedError(
                f"{step.message}{tried}. The pool replaced the worker and keeps working; "
                f"if the task itself crashes the process (a segfault, os._exit, running out of "
                f"memory), fix it or give it more memory.")
        value = error_value(error)
        return self.complete(step.spec, [value] * len(step.spec.return_ids),
                             status="cancelled" if step.reason == "cancelled" else "failed",
                             error=str(error))

    def complete(self, spec: TaskSpec, values: Sequence[Value], *, status: str,
                 error: str | None = None, started: float | None = None,
                 finished: float | None = None) -> list[Instruction]:
        """Store a task's results, release what it pinned, wake whoever waits (lock held)."""
        out: list[Instruction] = []
        bytes_out = 0
        for return_id, value in zip(spec.return_ids, values):
            value = self.adopt(value)
            bytes_out += value.nbytes
            self.forget(self.store.seal(return_id, value, value.nbytes))
            self.producers.pop(return_id, None)
            out.extend(self.scheduler.object_ready(return_id))
        self.forget(self.store.unpin_all(self.task_pins.pop(spec.task_id, ())))
        record = self.records.pop(spec.task_id, None)
        if record is not None:
            record.status = status  # type: ignore[assignment]
            record.started = started if started is not None else record.started
            record.finished = finished if finished is not None else time.time()
            record.bytes_out = bytes_out
            record.error = error
        self.requests.objects_ready(spec.return_ids)
        self.changed.notify_all()
        return out

    def adopt(self, value: Value) -> Value:
        """Count a value a worker made against the capacity; replace it by an error if full."""
        try:
            self.store.reserve(value.nbytes)
        except ObjectStoreFullError as exc:
            if not isinstance(value, InlineValue):
                object_store.remove_segment(value.segment)
            value = error_value(exc)
            self.store.reserve(value.nbytes)
        return value

    # -- the I/O thread -----------------------------------------------------------------------

    def _io_loop(self) -> None:
        while True:
            events = self._selector.select()
            outputs: list[tuple[int, Output]] = []
            with self.lock:
                if self._closing:
                    return
                self.drain()
                for key, _ in events:
                    kind, worker_id = key.data
                    if kind == "wake":
                        self._on_wake()
                    elif kind == "conn":
                        self._read_worker(worker_id, outputs)
                    else:
                        self._on_exit(worker_id)
            for worker_id, output in outputs:
                self.output_handler(worker_id, output.task_id, output.stream, output.text)

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        for process in self._to_register:
            if process.closed:
                continue
            self._selector.register(process.conn.fileno(), selectors.EVENT_READ,
                                    ("conn", process.worker_id))
            if process.sentinel is not None:
                self._selector.register(process.sentinel, selectors.EVENT_READ,
                                        ("exit", process.worker_id))
        self._to_register.clear()

    def _read_worker(self, worker_id: int, outputs: list[tuple[int, Output]]) -> None:
        process = self.workers.get(worker_id)
        if process is None or process.closed:
            return
        try:
            frames = process.reader.read()
        except (EOFError, OSError):
            self._on_exit(worker_id)
            return
        for frame in frames:
            message = pickle.loads(frame)
            if isinstance(message, Output):
                outputs.append((worker_id, message))
            else:
                self._handle(worker_id, message)

    def _handle(self, worker_id: int, message: Any) -> None:
        if isinstance(message, TaskDone):
            self._on_task_done(worker_id, message)
        elif isinstance(message, RefDelta):
            for object_id in message.added:
                self.store.add_refs(object_id)
            for object_id in message.removed:
                self.forget(self.store.remove_refs(object_id))
        elif isinstance(message, Request):
            self.execute(self.requests.handle(worker_id, message))
        elif isinstance(message, WorkerReady):
            self.worker_prefixes[worker_id] = message.id_prefix
            self.execute(self.scheduler.worker_ready(worker_id, message.pid))

    def _on_task_done(self, worker_id: int, done: TaskDone) -> None:
        spec = self.scheduler.task_of_run(done.seq)
        out = self.scheduler.task_done(worker_id, done.seq, done.finished - done.started)
        if spec is not None:
            if done.cancelled:
                error = TaskCancelledError(f"{spec.name} was cancelled while it ran")
                values: Sequence[Value] = [error_value(error)] * len(spec.return_ids)
                status, text = "cancelled", str(error)
            elif done.failed:
                values = list(done.results) * len(spec.return_ids)
                status, text = "failed", _error_summary(done.results[0])
            else:
                values, status, text = done.results, "finished", None
            out.extend(self.complete(spec, values, status=status, error=text,
                                     started=done.started, finished=done.finished))
        self.execute(out)

    def _on_exit(self, worker_id: int) -> None:
        process = self.workers.pop(worker_id, None)
        if process is None:
            return
        for fd in (process.conn.fileno(), process.sentinel):
            if fd is not None:
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
        code = process.exit_code(timeout=2.0)
        state = self.scheduler.workers.get(worker_id)
        spec = self.scheduler.running_task(worker_id)
        process.close()
        self._remove_partial_segments(worker_id, spec)
        self.requests.worker_gone(worker_id)
        if state is not None and state.state == "stopping" and spec is None:
            self.scheduler.worker_stopped(worker_id)
            self.execute(self.scheduler.start() if not self._closing else [])
            return
        what = f"while running {spec.name} (task {spec.task_id})" if spec else "while idle"
        describe = (f"worker {worker_id} (pid {process.pid}) died with {describe_exit(code)} "
                    f"{what}")
        self.execute(self.scheduler.worker_died(worker_id, describe))

    def _remove_partial_segments(self, worker_id: int, spec: TaskSpec | None) -> None:
        """Segments a dead worker was writing: nobody will ever own them."""
        prefix = self.worker_prefixes.pop(worker_id, None)
        names = reaper.segments_of(self.driver_pid)
        head = f"{config.SEGMENT_PREFIX}{self.driver_pid}-"
        for name in names:
            object_id = name[len(head):]
            mine = (prefix and object_id.startswith(prefix)) or (
                spec is not None and object_id in spec.return_ids)
            if mine and not self._is_ready(object_id):
                object_store.remove_segment(name)

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every worker, free every segment; safe to call twice."""
        with self.lock:
            if self._closing:
                return
            self._closing = True
            for worker_id in list(self.workers):
                self.send(worker_id, Stop())
            processes = list(self.workers.values())
            self.workers.clear()
        os.write(self._wake_w, b"q")
        if self._io_thread.is_alive() and threading.current_thread() is not self._io_thread:
            self._io_thread.join(timeout)
        pool.stop_all(processes, timeout)
        with self.lock:
            self._closed = True
            self.store.clear()
            self.records.clear()
            self.producers.clear()
            self.changed.notify_all()
        reaper.remove_segments_of(self.driver_pid)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _error_summary(value: Value) -> str:
    try:
        error = object_store.load(value)
        return f"{type(error.cause).__name__}: {error.cause}" if error.cause else str(error)
    except Exception:  # a summary only; get() reports the full error
        return "the task raised an error"


def _process_stats(process: pool.WorkerProcess | None) -> tuple[float | None, int | None]:
    if process is None or process.closed:
        return None, None
    try:
        if process.stats is None:
            process.stats = psutil.Process(process.pid)
            process.stats.cpu_percent(None)
        return process.stats.cpu_percent(None), process.stats.memory_info().rss
    except Exception:  # the process went away between the snapshot and now
        return None, None


def print_output(worker_id: int, task_id: str, stream: str, text: str) -> None:
    """Default: the driver's stdout / stderr, each line prefixed with the worker id."""
    target = sys.stderr if stream == "stderr" else sys.stdout
    prefix = f"(worker {worker_id}) "
    lines = text.splitlines(keepends=True)
    target.write("".join(prefix + line for line in lines))
    if not text.endswith("\n"):
        target.write("\n")
    target.flush()
