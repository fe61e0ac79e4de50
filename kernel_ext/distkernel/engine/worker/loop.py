"""The loop inside a worker process.

::

    driver ══ socketpair ══╦═════════════════════════╗
                           ║ (read only when needed)  ║ POLLRDHUP only, never reads
                           ▼                          ▼
       main thread: read -> RunTask -> run -> TaskDone    watchdog thread: the driver's
       while a task waits in get/wait/put it reads too:   end closed -> remove its
       Reply -> the waiting request, runs -> queued       files, exit at once
       (prints go out as Output messages as they are written)

    driver ── control block (shared page, ``control``) ────▶ marks: runs revoked or
              + SIGINT for a cancel                           cancelled; checked before a
                                                              run starts and on SIGINT

There is no reader thread: a thread hand-off cost a wake-up on every task. A
worker writes large results into room the driver lent it in the driver's arena
(``worker_client``) and creates no file itself. It knows the cluster's files
(``reaper.Space``) from its command line, checks every name it is sent against
them, and if the driver dies (even by SIGKILL) the watchdog (or a read's EOF)
removes them and exits.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sys
import threading
import time

# The C function under signal.getsignal, which converts its answer to an enum member and
# costs microseconds; this runs after every task.
from _signal import getsignal as _current_handler
from typing import TYPE_CHECKING, Any

from multiprocess.connection import Connection

from distkernel.core import context, refs
from distkernel.core.exceptions import (
    ActorDiedError,
    ActorExit,
    TaskError,
    actor_exit_reason,
    actor_gone,
    exception_text,
    returned_values,
)
from distkernel.core.interrupts import DEFERRED_SIGINT
from distkernel.core.protocol import (
    InlineValue,
    Output,
    RefDelta,
    RunBatch,
    RunTask,
    SetSerializers,
    SharedValue,
    Stop,
    TaskDone,
    TaskSpec,
    Value,
    WorkerMessage,
    WorkerReady,
)
from distkernel.core.wire import write_frame
from distkernel.engine import control
from distkernel.engine.worker.calls import CURRENT_CALL, Outcome
from distkernel.engine.worker.client import WorkerClient
from distkernel.engine.worker.held_ends import HeldEnds
from distkernel.engine.worker.mailbox import Mailbox, watch_for_hang_up
from distkernel.engine.worker.output import DriverStream
from distkernel.store import object_store
from distkernel.store.pickler import registry
from distkernel.store.reaper import Space
from distkernel.store.serialization import deserialize, dumps_exception, serialize

if TYPE_CHECKING:
    from distkernel.engine.worker.concurrency import ConcurrentCalls

#: The method every actor answers once it is up, as Ray's.
READY_METHOD = "__ray_ready__"


def _ready() -> bool:
    return True


def _cancelled_coroutine(exc: BaseException) -> bool:
    """An async actor's call was cancelled (asyncio is imported only by async actors)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


class Cancelled(BaseException):
    """Raised in the task's thread by SIGINT after a cancel; BaseException so
    ``except Exception`` in user code cannot swallow it."""


class UpstreamFailed(Exception):
    """An argument's task failed: this task fails with that same error, unwrapped."""

    def __init__(self, value: Value) -> None:
        super().__init__("an argument's task failed")
        self.value = value


class Transitions:
    """Counts per key; remembers only first-up and last-down transitions until taken.

    Refs and arena views a worker holds are reported to the driver this way: a
    thousand copies of one ref cost one "added" and one "removed".
    """

    def __init__(self) -> None:
        self._counts: dict[Any, int] = {}
        self.first_up: list[Any] = []
        self.last_down: list[Any] = []

    def up(self, key: Any) -> None:
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count == 1:
            self.first_up.append(key)

    def down(self, key: Any) -> None:
        count = self._counts.get(key, 0) - 1
        if count <= 0:
            self._counts.pop(key, None)
            self.last_down.append(key)
        else:
            self._counts[key] = count

    def take(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The transitions since the last take."""
        taken = tuple(self.first_up), tuple(self.last_down)
        self.first_up, self.last_down = [], []
        return taken


class Link:
    """The worker's side of the pipe: ordered sends and ref-count deltas."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._fd = conn.fileno()
        self._send_lock = threading.Lock()
        self._refs = Transitions()
        self._views = Transitions()  # arena regions mapped here: the driver must not reuse them
        # Re-entrant: a ref can die (and call remove) inside a GC pass started while held.
        self._delta_lock = threading.RLock()

    # RefTracker: only first-alive and last-gone transitions travel.
    def add(self, object_id: str) -> None:
        with self._delta_lock:
            self._refs.up(object_id)

    def remove(self, object_id: str) -> None:
        with self._delta_lock:
            self._refs.down(object_id)

    def view_opened(self, key: tuple[str, int]) -> None:
        with self._delta_lock:
            self._views.up(key)

    def view_closed(self, key: tuple[str, int]) -> None:
        with self._delta_lock:
            self._views.down(key)

    def _take_delta(self) -> RefDelta | None:
        with self._delta_lock:
            refs, views = self._refs, self._views
            if not (refs.first_up or refs.last_down or views.first_up or views.last_down):
                return None
            return RefDelta(*refs.take(), *views.take())

    def send(self, message: WorkerMessage) -> None:
        """Send, preceded by pending ref deltas so the driver sees them first. A cancel's
        SIGINT landing meanwhile waits until the frames are out."""
        with DEFERRED_SIGINT, self._send_lock:
            delta = self._take_delta()
            if delta is not None:
                write_frame(self._fd, pickle.dumps(delta, protocol=5))
            write_frame(self._fd, pickle.dumps(message, protocol=5))

    def flush_refs(self) -> None:
        # Looked at without the lock first (after every task): a change another thread
        # makes meanwhile goes with the next message.
        refs, views = self._refs, self._views
        if not (refs.first_up or refs.last_down or views.first_up or views.last_down):
            return
        with DEFERRED_SIGINT, self._send_lock:
            delta = self._take_delta()
            if delta is not None:
                write_frame(self._fd, pickle.dumps(delta, protocol=5))


class VisibleGpus:
    """``CUDA_VISIBLE_DEVICES`` for the run that was given GPUs, as Ray sets it.

    The scheduler counts devices 0..n-1; if the driver itself saw only some devices,
    those are what 0..n-1 stand for. An actor keeps its devices for its life.
    """

    def __init__(self) -> None:
        self._before = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._physical = [d for d in (self._before or "").split(",") if d.strip()]
        self._restore = False
        self.assigned: list[str] = []  # what the run (or the actor) was given
        self._kept: list[str] = []  # an actor's, for its life

    def use(self, devices: tuple[int, ...], *, for_good: bool) -> None:
        names = [self._physical[d] if d < len(self._physical) else str(d) for d in devices]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names)
        self.assigned = names
        self._restore = not for_good
        if for_good:
            self._before = os.environ["CUDA_VISIBLE_DEVICES"]
            self._kept = names

    def done(self) -> None:
        self.assigned = self._kept
        if not self._restore:
            return
        self._restore = False
        if self._before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._before


class Worker:
    """State of this worker process: its link, function cache and current run."""

    def __init__(self, conn: Connection, worker_id: int, cluster_id: str, control_fd: int,
                 space: Space) -> None:
        self.link = Link(conn)
        # A cancel's SIGINT never cuts a frame being read in half: it waits for the read.
        self.mailbox = Mailbox(conn.fileno(), self.driver_gone, DEFERRED_SIGINT)
        self.control = control.ControlView(control_fd)
        self.worker_id = worker_id
        self.space = space  # where the cluster's files are, to check every name we are sent
        self.driver_pid = space.driver_pid
        self.cluster_id = cluster_id
        self.functions: dict[str, Any] = {}
        self.current_seq = 0
        self.current_task = ""
        self._interrupted = 0  # the run a Cancelled was raised in (at most once per run)
        self._stopping = False
        self.actor: Any = None  # the instance, in a worker that hosts an actor
        self.actor_id = ""
        self.actor_error = ""
        self.actor_ended = ""  # why, once a method called exit_actor()
        self.stdout = DriverStream(self._send_output, "stdout")
        self.stderr = DriverStream(self._send_output, "stderr")
        self.client = WorkerClient(self)  # the API for tasks, in this process
        self.gpus = VisibleGpus()
        self.concurrency: ConcurrentCalls | None = None  # an actor running calls at once
        self._batch: RunBatch | None = None  # the batch whose members run now
        self._held = HeldEnds(self.link.send)  # its members' ends, not reported yet

    def _send_output(self, stream: str, text: str) -> None:
        try:
            task = CURRENT_CALL.get() or self.current_task
            self.link.send(Output(task, stream, text))  # type: ignore[arg-type]
        except OSError:
            pass  # the driver is gone; the watchdog is ending this process

    def take_over_process(self) -> None:
        """Install the worker's SIGINT handler and output streams."""
        signal.signal(signal.SIGINT, self.on_sigint)
        sys.stdout = self.stdout  # type: ignore[assignment]
        sys.stderr = self.stderr  # type: ignore[assignment]

    def restore_process(self) -> None:
        """Undo what a task changed for every later task: its SIGINT handler (a task that
        ignored SIGINT would make later tasks uncancellable) and sys.stdout / sys.stderr.
        """
        current = _current_handler(signal.SIGINT)
        if current != self.on_sigint and not (current == DEFERRED_SIGINT.handler and
                                              DEFERRED_SIGINT.previous == self.on_sigint):
            signal.signal(signal.SIGINT, self.on_sigint)
        if sys.stdout is not self.stdout or sys.stderr is not self.stderr:
            sys.stdout = self.stdout  # type: ignore[assignment]
            sys.stderr = self.stderr  # type: ignore[assignment]

    def on_sigint(self, signum: int, frame: Any) -> None:
        # SIGINT also reaches us when Jupyter interrupts the kernel's process group, and a
        # late one may land in the next run; only a cancel marked for the run in progress
        # stops it. While a frame is read or sent, DEFERRED_SIGINT (in front of this
        # handler) holds the signal back and calls this when the frame is done. An actor
        # running calls concurrently cancels the marked ones instead (async calls only:
        # a thread cannot be interrupted, as in Ray).
        if self.concurrency is not None:
            self.concurrency.cancel_marked()
        else:
            self.raise_if_cancelled()

    def raise_if_cancelled(self) -> None:
        seq = self.current_seq
        if seq and seq != self._interrupted and self.control.cancelled(seq):
            self._interrupted = seq
            raise Cancelled

    def driver_gone(self) -> None:
        if not self._stopping:
            # The driver died without stopping us: nobody else will remove its files.
            self.space.remove_all()
        os._exit(0)

    # -- main thread -------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            message = self.mailbox.next_message()
            if isinstance(message, RunTask):
                if self.concurrency is not None and message.spec.kind == "actor_method":
                    self.concurrency.submit(message)
                else:
                    self.run(message)
            elif isinstance(message, RunBatch):
                self.run_batch(message)
            elif isinstance(message, SetSerializers):
                registry.load(message.registry)
            elif isinstance(message, Stop):
                self._stopping = True
                return

    def run_batch(self, batch: RunBatch) -> None:
        """Run a batch's members in order, each as a run of its own (``run``); their ends
        travel together (``held_ends``)."""
        template = batch.template
        self._batch = batch
        self._held.start(batch.seq)
        try:
            for index, (task_id, args, return_ids) in enumerate(batch.members):
                spec = TaskSpec(task_id, template.name, template.kind, template.function_hash,
                                args, (), return_ids, template.max_retries)
                self.run(RunTask(batch.seq + index, spec, (), batch.function, batch.poll_after))
        finally:
            self._batch = None
            self._held.finish()

    def run(self, message: RunTask) -> None:
        """Run one task or call here, in the main thread, where a cancel can interrupt it."""
        spec = message.spec
        started = time.time()
        outcome = Outcome()
        mark = 0
        try:
            try:
                # current_seq before the check: a cancel marked after it interrupts instead.
                self.current_seq, self.current_task = message.seq, spec.task_id
                self.control.set_running(message.seq)
                mark = self.control.take(message.seq)
                if mark:
                    raise Cancelled
                if message.gpu_ids:
                    self.gpus.use(message.gpu_ids, for_good=spec.kind == "actor_create")
                outcome = self.call(message)
            except BaseException as exc:  # noqa: BLE001 - every task error goes to get()
                outcome = self.failure(spec, exc)
        except Cancelled:  # the interrupt landed while we were already handling an error
            outcome = Outcome(cancelled=True)
        finally:
            self.current_seq = 0
            self.control.set_running(0)
            self.gpus.done()
        if mark == control.REVOKED:  # the driver took it back and sent it elsewhere
            self.current_task = ""
            return
        self.restore_process()
        self.finish(message, started, outcome)
        self.client.give_back_unsent()  # room set aside for results a cancel cut short
        self.current_task = ""
        self.mailbox.poll_when_idle = message.poll_after
        del outcome
        self.link.flush_refs()
        if spec.kind == "actor_create" and message.actor is not None and self.actor is not None:
            from distkernel.engine.worker.concurrency import concurrent_calls  # asyncio: only here

            self.concurrency = concurrent_calls(self, message.actor)

    def call(self, message: RunTask) -> Outcome:
        """Call the task's function (or the actor's method) and store what it returns."""
        spec = message.spec
        function = self.callable_for(spec, message.function)
        args, kwargs = self.arguments(message)
        return self.outcome_of(spec, function(*args, **kwargs))

    def outcome_of(self, spec: TaskSpec, value: Any) -> Outcome:
        if spec.kind == "actor_create":
            self.actor, value = value, None
            self.actor_id = spec.actor_id
        return Outcome(self._store_results(spec, value), value=value)

    def failure(self, spec: TaskSpec, exc: BaseException) -> Outcome:
        """What a call that raised reports: cancelled, its argument's error, the end of its
        actor (exit_actor), or its own error."""
        if isinstance(exc, Cancelled) or _cancelled_coroutine(exc):
            return Outcome(cancelled=True)
        if isinstance(exc, UpstreamFailed):
            return Outcome((exc.value,), failed=True)
        if isinstance(exc, ActorExit) and spec.kind == "actor_method":
            self.actor_ended = actor_exit_reason(spec.name)  # calls sent behind it fail
            return Outcome(self._store_results(spec, None), exited=True)
        if spec.kind == "actor_create":
            self.actor_error = exception_text(exc)
        return Outcome((self._error_value(spec.name, exc),), failed=True)

    def finish(self, message: RunTask, started: float, outcome: Outcome) -> None:
        """Report a finished call: its output first, then its results."""
        self.stdout.flush()
        self.stderr.flush()
        self.client.handed_over(outcome.results)
        batch = self._batch
        if batch is not None:
            self._held.add((message.seq - batch.seq, outcome.results, started, time.time(),
                            outcome.failed, outcome.cancelled))
            return
        self.link.send(TaskDone(message.seq, message.spec.task_id, outcome.results, started,
                                time.time(), failed=outcome.failed,
                                cancelled=outcome.cancelled, actor_exited=outcome.exited))

    def callable_for(self, spec: TaskSpec, payload: bytes | None) -> Any:
        """The function of a task, the class of an actor creation, or the actor's method."""
        if spec.kind != "actor_method":
            return self._function(spec.function_hash, payload)
        if self.actor is None:
            msg = (f"the actor {spec.name.split('.')[0]} could not be created, so "
                   f"{spec.name} cannot run: its constructor raised {self.actor_error}")
            raise ActorDiedError(msg)
        if self.actor_ended:
            raise actor_gone(spec.name, self.actor_ended)
        if spec.method == READY_METHOD:  # handle.__ray_ready__.remote(): the actor is up
            return _ready
        return getattr(self.actor, spec.method)

    def _function(self, function_hash: str, payload: bytes | None) -> Any:
        function = self.functions.get(function_hash)
        if function is None:
            if payload is None:
                msg = f"worker {self.worker_id} was not sent function {function_hash}"
                raise RuntimeError(msg)
            function = self.functions[function_hash] = deserialize(payload)
        return function

    def arguments(self, message: RunTask) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = self.open(message.spec.args)
        if message.resolved:
            for _, value in message.resolved:
                if value.is_error:
                    raise UpstreamFailed(value)
            values = {object_id: self.load(value) for object_id, value in message.resolved}
            args = [values[a.hex()] if type(a) is refs.ObjectRef and a.hex() in values else a
                    for a in args]
            kwargs = {k: values[v.hex()] if type(v) is refs.ObjectRef and v.hex() in values else v
                      for k, v in kwargs.items()}
        return list(args), kwargs

    def open(self, value: Value) -> Any:
        """Unpickle a value; an arena region stays reported as viewed while views live."""
        if not isinstance(value, SharedValue):
            return object_store.load(value)
        if value.spilled:
            if not self.space.owns_spill_file(os.path.dirname(value.segment), value.segment):
                msg = f"{value.segment!r} is not a spilled object of this cluster"
                raise ValueError(msg)
            return object_store.load(value, object_store.map_readonly(value.segment, value))
        key = (value.segment, value.offset)
        path = self.space.segment_path(value.segment)
        self.link.view_opened(key)
        try:
            view = object_store.map_readonly(path, value,
                                             functools.partial(self.link.view_closed, key))
        except BaseException:
            self.link.view_closed(key)
            raise
        return object_store.load(value, view)

    def gpu_ids(self) -> list[str]:
        """The GPU devices the running task (or this actor) was given."""
        return list(self.gpus.assigned)

    def load(self, value: Value) -> Any:
        result = self.open(value)
        if value.is_error:
            try:
                raise result
            finally:  # (no cycle through this frame: see LocalEngine.get)
                del result
        return result

    def _store_results(self, spec: Any, value: Any) -> tuple[Value, ...]:
        count = len(spec.return_ids)
        values = (value,) if count == 1 else returned_values(spec.name, count, value)
        return tuple(self.client.store(serialize(v)) for v in values)

    def _error_value(self, task_name: str, exc: BaseException) -> InlineValue:
        """The task's exception as a stored TaskError; plain text if even that fails.

        A nested task's error (a TaskError a ``get`` in this task raised) already carries
        its remote traceback in its message: it is written once, not once more from its
        ``__cause__`` and once more in this message's first line.
        """
        summary = exception_text(exc)
        if isinstance(exc, TaskError):
            exc.__cause__, exc.__suppress_context__ = None, True
            summary = summary.split("\n", 1)[0]
        try:
            exc_bytes, text = dumps_exception(exc)
            cause = pickle.loads(exc_bytes)
        except Exception:  # noqa: BLE001 - the error report must not take the worker down
            text, cause, exc_bytes = exception_text(exc), None, None
        message = (f"{task_name} failed with {summary}\n\n"
                   f"Remote traceback (worker {self.worker_id}, pid {os.getpid()}):\n{text}")
        error = TaskError(message, cause=cause, remote_traceback=text, task_name=task_name,
                          cause_bytes=exc_bytes)
        try:
            return object_store.to_inline(serialize(error, out_of_band=False), is_error=True)
        except Exception:  # noqa: BLE001 - the cause itself does not serialize: send the text alone
            plain = TaskError(message, remote_traceback=text, task_name=task_name)
            return object_store.to_inline(serialize(plain, out_of_band=False), is_error=True)


def _batch_scheduling() -> None:
    """Run as a batch process (Linux ``SCHED_BATCH``): the same share of the CPU, but a
    worker woken by a message no longer preempts the process that sent it. With more
    busy processes than CPUs, the driver otherwise lost its CPU at each write of a loop
    submitting many small tasks (it ran about 20 % slower)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # refused by a sandbox's policy: the default works, a little slower
        pass


def main(argv: list[str]) -> None:
    """``python -m distkernel.engine.worker FD WORKER_ID CLUSTER_ID CONTROL_FD SHM_DIR SPILL_DIR
    OWNER`` (the last three describe the cluster's files, see ``reaper.Space``)."""
    fd, worker_id, cluster_id, control_fd = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    _batch_scheduling()
    space = Space.from_description(*argv[4:7])
    conn = Connection(fd)
    worker = Worker(conn, worker_id, cluster_id, control_fd, space)
    try:
        watch_for_hang_up(fd, worker.driver_gone)
        setup = pickle.loads(conn.recv_bytes())  # sys.path and the serializer registry
        sys.path[:0] = [p for p in setup["sys_path"] if p not in sys.path]
        if setup["registry"]:
            registry.load(setup["registry"])
        refs.set_tracker(worker.link)
        context.set_worker(worker.client)
        worker.take_over_process()
        worker.link.send(WorkerReady())
        worker.serve()
    except (EOFError, OSError):  # the driver went away: same clean-up as the watchdog's
        worker.driver_gone()
    os._exit(0)

