"""Which task runs where and when: a pure state machine, no I/O.

The local backend feeds it events (a task submitted, a worker ready, a task
done, a worker died, an object became ready, a worker blocked in ``get``) and
carries out the instructions each event returns (dispatch a task, fail a
task, start / stop / interrupt / kill a worker). Tests drive it directly,
without processes (habit 3).

A task waits, holding no worker, until every top-level ObjectRef argument is
ready; then it queues FIFO for an idle worker and for the resources it asks
for (one CPU by default; ``resources``): it holds them while it runs. A worker
blocked in ``get`` on other tasks gives its CPU back meanwhile, so nested tasks
cannot starve the pool: when queued work fits the free resources and no worker
is idle, an extra worker starts (also for tasks that need no CPU), and stops
when it is idle again and the pool is back above its size.

Short tasks are pipelined: a worker running a function known to take under
``PREFETCH_BELOW`` seconds is sent more short tasks, about ``PREFETCH_WORK``
seconds of them (at most ``PREFETCH_DEPTH``), so it never idles for a round
trip and the driver sends and reads them in batches. A prefetched task is taken back (``Revoke``) if
its worker blocks in ``get``, and re-queued if the worker dies.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from distkernel.core.protocol import TaskSpec
from distkernel.engine.resources import ONE_CPU, Needs, Resources, needs_of
from distkernel.engine.scheduler_types import (
    NOTHING,
    ActorState,
    Dispatch,
    FailTask,
    Instruction,
    InterruptWorker,
    KillWorker,
    Revoke,
    StartWorker,
    StopWorker,
    TaskState,
    WorkerState,
)

__all__ = ["Dispatch", "FailTask", "Instruction", "InterruptWorker", "KillWorker", "Revoke",
           "Scheduler", "StartWorker", "StopWorker"]

#: Pipeline a second task onto a worker when both tasks' functions usually run faster than this.
PREFETCH_BELOW = 0.002
#: How many runs a worker may hold at most (one running, the rest waiting in its socket).
PREFETCH_DEPTH = 32
#: How much work (seconds, at the function's typical duration) a worker is sent ahead: enough
#: for the driver to send and read in batches, little enough that no worker hoards work.
PREFETCH_WORK = 1e-3
#: Calls sent ahead to an actor's worker; the rest wait here, so its socket never fills.
ACTOR_IN_FLIGHT = 16
#: A task's ``waiting_on`` while it waits for nothing: shared, never changed (a task that
#: waits gets a set of its own), so most tasks cost no set.
_NOT_WAITING: set[str] = set()



class Scheduler:
    """Pool-wide scheduling state. ``is_ready(object_id)`` tells whether a value is stored."""

    def __init__(self, num_workers: int, is_ready: Callable[[str], bool],
                 max_extra_workers: int, resources: Mapping[str, float] | None = None) -> None:
        self.num_workers = num_workers
        self.max_extra_workers = max_extra_workers
        self._is_ready = is_ready
        self.resources = Resources(num_workers, resources)
        self.workers: dict[int, WorkerState] = {}
        self.tasks: dict[str, TaskState] = {}
        self.queue: deque[str] = deque()  # tasks asking for one CPU, FIFO
        self.special: deque[str] = deque()  # tasks asking for anything else, FIFO
        self.waiting_actors: list[str] = []  # actors waiting for the resources they hold
        self._waiters: dict[str, list[str]] = {}
        self._runs: dict[int, str] = {}  # seq -> task_id
        self._next_worker_id = 1
        self._next_seq = 1
        self._durations: dict[str, float] = {}  # function hash -> typical run time
        self._depths: dict[str, int] = {}  # function hash -> runs a worker may hold (prefetch)
        self.actors: dict[str, ActorState] = {}
        self.pinned: dict[int, deque[str]] = {}  # worker id -> tasks that must run there
        self._submitted = 0

    # -- workers -----------------------------------------------------------------------------

    def add_worker(self, *, extra: bool = False, actor_id: str = "") -> int:
        """Record a worker about to be started; returns its id."""
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        self.workers[worker_id] = WorkerState(worker_id, extra=extra, actor_id=actor_id)
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.worker_id = worker_id
        return worker_id

    def start(self) -> list[Instruction]:
        """Instructions to bring the pool to its size."""
        missing = self.num_workers - self._live_regular_count()
        return [StartWorker() for _ in range(max(0, missing))]

    def worker_ready(self, worker_id: int) -> list[Instruction]:
        worker = self.workers[worker_id]
        if worker.state == "starting":
            worker.state = "idle"
        if worker.actor_id:
            actor = self.actors.get(worker.actor_id)
            return self._dispatch_actor(actor) if actor is not None else [StopWorker(worker_id)]
        return self._dispatch()

    def worker_died(self, worker_id: int, describe: str) -> list[Instruction]:
        """A worker exited unexpectedly: retry or fail its task, and replace it."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        if worker.actor_id:
            actor = self.actors.get(worker.actor_id)  # gone already if it was released
            return self._actor_died(actor, worker, describe) if actor is not None else []
        self._unpin(worker_id)  # its replacement has another id
        out: list[Instruction] = []
        again: list[str] = []  # back to the queue front, in the order they were sent
        for position, seq in enumerate(worker.assigned):
            task_id = self._runs.pop(seq, None)
            task = self.tasks.get(task_id) if task_id else None
            if task is None:
                continue
            self._let_go(task)
            task.worker_id = task.seq = None
            if task.cancel_requested:
                del self.tasks[task.spec.task_id]
                out.append(FailTask(task.spec, "cancelled", "the task was cancelled"))
            elif position > 0:  # never started: back to the queue, no retry used
                again.append(task.spec.task_id)
            elif task.retries_left > 0:
                task.retries_left -= 1
                again.append(task.spec.task_id)
            else:
                del self.tasks[task.spec.task_id]
                out.append(FailTask(task.spec, "crashed", describe))
        for task_id in reversed(again):
            self._enqueue(self.tasks[task_id], front=True)
        if worker.state != "stopping" and not worker.extra:
            out.append(StartWorker())
        out.extend(self._dispatch())
        return out

    def worker_stopped(self, worker_id: int) -> list[Instruction]:
        """A worker we stopped has exited; tasks pinned to it may run anywhere now."""
        self.workers.pop(worker_id, None)
        self._unpin(worker_id)
        return self.start() + self._dispatch()

    def _unpin(self, worker_id: int) -> None:
        for task_id in self.pinned.pop(worker_id, ()):
            if task_id in self.tasks:
                self._enqueue(self.tasks[task_id])

    def worker_blocked(self, worker_id: int) -> list[Instruction]:
        """The worker waits in ``get``: let another worker take its place meanwhile."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.state != "busy":
            return []
        worker.state = "blocked"
        self._hold_cpu(worker, False)  # as Ray: a task blocked in get gives its CPU back
        return self._take_back_prefetched(worker) + self._dispatch()

    def _hold_cpu(self, worker: WorkerState, hold: bool) -> None:
        """Give back (or take again) the CPU of the run in progress on ``worker``."""
        task = self.tasks.get(self._runs.get(worker.running, "")) \
            if worker.running is not None else None
        cpus = task.needs.get("CPU", 0.0) if task is not None else 0.0
        if task is None or not cpus or bool(task.held.get("CPU")) == hold:
            return
        if hold:
            self.resources.acquire({"CPU": cpus})
            task.held = {**task.held, "CPU": cpus}
        else:
            self.resources.release({"CPU": cpus})
            task.held = {k: v for k, v in task.held.items() if k != "CPU"}

    def _extra_needed(self) -> list[Instruction]:
        """Start an extra worker when a queued task fits the free resources but no worker
        is idle: a parent blocked in get has given its CPU back to its children, or the
        tasks need no CPU (``num_cpus=0`` or a fraction)."""
        if not (self.queue or self.special) or self._next_task() is None or \
                self._live_regular_count() < self.num_workers:
            return []  # nothing fits, or regular workers are being (re)started anyway
        regular = [w for w in self.workers.values() if not w.actor_id]
        if any(w.state in ("idle", "starting") for w in regular):
            return []
        extras = sum(1 for w in regular if w.extra and w.state != "stopping")
        return [StartWorker(extra=True)] if extras < self.max_extra_workers else []

    def _take_back_prefetched(self, worker: WorkerState) -> list[Instruction]:
        """Runs queued behind a blocked task could be the very children it waits for.

        Not for an actor: its calls must run there, in order, whatever they wait for.
        """
        if worker.actor_id:
            return []
        revoked: list[int] = []
        out: list[Instruction] = []
        while len(worker.assigned) > 1:
            seq = worker.assigned.pop()
            task_id = self._runs.pop(seq, None)
            task = self.tasks.get(task_id) if task_id else None
            if task is not None:
                task.worker_id = task.seq = None
                if task.cancel_requested:  # its cancel mark goes with the revoked run
                    del self.tasks[task.spec.task_id]
                    out.append(FailTask(task.spec, "cancelled", "the task was cancelled"))
                else:
                    self._enqueue(task, front=True)
            revoked.append(seq)
        if revoked:
            out.insert(0, Revoke(worker.worker_id, tuple(reversed(revoked))))
        return out

    def worker_unblocked(self, worker_id: int) -> list[Instruction]:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.state == "blocked":
            worker.state = "busy"
            self._hold_cpu(worker, True)
        out: list[Instruction] = []
        for extra in self.workers.values():
            if extra.extra and extra.state == "idle" and self._should_retire(extra):
                extra.state = "stopping"
                out.append(StopWorker(extra.worker_id))
        return out

    # -- tasks -------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, caller: str = "driver") -> list[Instruction]:
        if spec.actor_id:
            return self._submit_actor_call(spec, caller)
        why = self.infeasible(needs_of(spec.resources)) if spec.resources else None
        if why is not None:
            return [FailTask(spec, "infeasible", f"{spec.name} can never run here: {why}")]
        task = self._track(spec, caller)
        if task.waiting_on:
            return []
        queued_behind = bool(self.queue) and task.needs is ONE_CPU and not spec.pin_worker
        self._enqueue(task)
        if queued_behind:  # behind others at the back of the queue: nothing can change
            return []
        return self._dispatch()

    def submit_plain(self, specs: Sequence[TaskSpec],
                     sizes: Mapping[str, int] | None = None) -> list[Instruction]:
        """Track tasks submitted together that each need one CPU and nothing else: no
        actor, no pinned worker, no ref arguments (so they wait for nothing).

        ``sizes``: the tasks that are batches of several (task id -> how many); a run of
        one takes as many seqs, one for each of its tasks.
        """
        tasks, queue = self.tasks, self.queue
        for spec in specs:
            self._submitted += 1
            tasks[spec.task_id] = TaskState(spec, _NOT_WAITING, spec.max_retries, None, None,
                                            False, "driver", self._submitted, ONE_CPU)
            queue.append(spec.task_id)
        for task_id, size in (sizes or {}).items():
            tasks[task_id].seqs = size
        return self._dispatch()

    def depth_of(self, function_hash: str) -> int:
        """How many runs of this function a worker may hold (1: not known to be short)."""
        return self._depths.get(function_hash, 1)

    def note_duration(self, function_hash: str, duration: float) -> None:
        """A run of this function took ``duration`` seconds: update its typical time."""
        typical = 0.7 * self._durations.get(function_hash, duration) + 0.3 * duration
        self._durations[function_hash] = typical
        self._depths[function_hash] = prefetch_depth(typical)

    def run_of(self, task_id: str) -> int | None:
        """The seq of the task's run now (None: not sent to a worker)."""
        task = self.tasks.get(task_id)
        return task.seq if task is not None else None

    def infeasible(self, needs: Needs) -> str | None:
        """Why a task or actor asking for ``needs`` can never run here, or None."""
        return self.resources.infeasible(needs)

    def _enqueue(self, task: TaskState, *, front: bool = False) -> None:
        pin = task.spec.pin_worker
        if pin and pin in self.workers:
            queue = self.pinned.setdefault(pin, deque())
        else:
            queue = self.queue if task.needs is ONE_CPU else self.special
        if front:
            queue.appendleft(task.spec.task_id)
        else:
            queue.append(task.spec.task_id)

    def _track(self, spec: TaskSpec, caller: str) -> TaskState:
        self._submitted += 1
        task = TaskState(spec, _NOT_WAITING, retries_left=spec.max_retries, caller=caller,
                         order=self._submitted,
                         needs=NOTHING if spec.actor_id else
                         needs_of(spec.resources) if spec.resources else ONE_CPU)
        self.tasks[spec.task_id] = task
        for object_id in spec.top_level_refs:
            if not self._is_ready(object_id):
                if task.waiting_on is _NOT_WAITING:
                    task.waiting_on = set()
                task.waiting_on.add(object_id)
                self._waiters.setdefault(object_id, []).append(spec.task_id)
        return task

    def awaited(self, object_id: str) -> bool:
        """Whether a tracked task waits for this object (``object_ready`` has work to do)."""
        return object_id in self._waiters

    def object_ready(self, object_id: str) -> list[Instruction]:
        waiting = self._waiters.pop(object_id, None)
        if not waiting:
            return []
        actors_touched: set[str] = set()
        for task_id in waiting:
            task = self.tasks.get(task_id)
            if task is None:
                continue
            task.waiting_on.discard(object_id)
            if task.waiting_on:
                continue
            if task.spec.actor_id:
                actors_touched.add(task.spec.actor_id)
            else:
                self._enqueue(task)
        out = self._dispatch()
        for actor_id in actors_touched:
            actor = self.actors.get(actor_id)
            if actor is not None:
                out.extend(self._dispatch_actor(actor))
        return out

    def retries_left(self, seq: int) -> int:
        task = self.tasks.get(self._runs.get(seq, ""))
        return task.retries_left if task is not None else 0

    def task_done(self, worker_id: int, seq: int, duration: float | None = None, *,
                  retry: bool = False, dispatch: bool = True) -> list[Instruction]:
        """The run ``seq`` finished (any outcome); the worker may take more work. ``retry``:
        it raised an exception its task is retried for (retry_exceptions), using a retry.

        ``dispatch=False``: the caller handles several runs that ended and calls
        ``dispatch()`` once after them (one pass hands out work for all of them).
        """
        task_id = self._runs.pop(seq, None)
        task = self.tasks.get(task_id) if task_id is not None else None
        if task is not None and retry and task.retries_left > 0:
            task.retries_left -= 1
            self._let_go(task)
            task.worker_id = task.seq = None
            self._enqueue(task, front=True)
            task = None  # still tracked, queued again
        elif task is not None:
            del self.tasks[task.spec.task_id]
            self._let_go(task)
            if duration is not None:
                self.note_duration(task.spec.function_hash, duration)
        worker = self.workers.get(worker_id)
        out: list[Instruction] = []
        if worker is not None and seq in worker.assigned:
            worker.assigned.remove(seq)
            self._take_over_cpu(worker)
            if worker.state in ("busy", "blocked"):
                worker.state = "busy" if worker.assigned else "idle"
            if worker.actor_id:
                actor = self.actors.get(worker.actor_id)
                if actor is None:
                    return []
                return self._dispatch_actor(actor) + self._maybe_stop_actor(actor)
            if worker.state == "idle" and self._should_retire(worker):
                worker.state = "stopping"
                out.append(StopWorker(worker_id))
        if dispatch:
            out.extend(self._dispatch())
        return out

    def dispatch(self) -> list[Instruction]:
        """Hand out queued work to idle and short-running workers (see ``task_done``)."""
        return self._dispatch()

    def lightly_loaded(self) -> bool:
        """At most about one unfinished task per worker: the tight loop of small tasks.

        Only then should a worker poll for its next task after this one: when many
        tasks are in flight the driver is the bottleneck, and a polling worker would
        take the CPU it needs.
        """
        return len(self.tasks) <= max(self.num_workers, 2)

    def _should_retire(self, worker: WorkerState) -> bool:
        if worker.extra:  # only once the workers it stood in for are back
            return self._active_count() > self.num_workers
        return self._live_regular_count() > self.num_workers

    def cancel(self, task_id: str, *, force: bool) -> list[Instruction]:
        """Cancel a queued task at once, or interrupt (``force``: kill) a running one."""
        task = self.tasks.get(task_id)
        if task is None:
            return []
        if task.seq is None:
            del self.tasks[task_id]
            for queue in (self.queue, self.special):
                if task_id in queue:
                    queue.remove(task_id)
            pinned = self.pinned.get(task.spec.pin_worker)
            if pinned is not None and task_id in pinned:
                pinned.remove(task_id)
            actor = self.actors.get(task.spec.actor_id)
            after: list[Instruction] = []
            if actor is not None and task_id in actor.queues.get(task.caller, ()):
                actor.queues[task.caller].remove(task_id)
                after = self._dispatch_actor(actor)  # the caller's next calls may go now
            for object_id in task.waiting_on:
                waiters = self._waiters.get(object_id)
                if waiters and task_id in waiters:
                    waiters.remove(task_id)
            return [FailTask(task.spec, "cancelled", "the task was cancelled before it ran"),
                    *after]
        task.cancel_requested = True
        worker = self.workers.get(task.worker_id)  # type: ignore[arg-type]
        if force and worker is not None and worker.running == task.seq:
            return [KillWorker(task.worker_id)]  # type: ignore[arg-type]
        return [InterruptWorker(task.worker_id, task.seq)]  # type: ignore[arg-type]

    @property
    def next_seq(self) -> int:
        """The seq the next run will get: every later run's is at least this."""
        return self._next_seq

    def running_task(self, worker_id: int) -> TaskSpec | None:
        worker = self.workers.get(worker_id)
        if worker is None or worker.running is None:
            return None
        task_id = self._runs.get(worker.running)
        task = self.tasks.get(task_id) if task_id else None
        return task.spec if task else None

    def task_of_run(self, seq: int) -> TaskSpec | None:
        task_id = self._runs.get(seq)
        task = self.tasks.get(task_id) if task_id else None
        return task.spec if task else None

    def resize(self, num_workers: int) -> list[Instruction]:
        """Grow now; shrink by stopping idle regular workers (busy ones stop when done)."""
        self.num_workers = num_workers
        self.resources.set_cpus(num_workers)
        out: list[Instruction] = list(self.start())
        surplus = self._live_regular_count() - num_workers
        for worker in sorted(self.workers.values(), key=lambda w: w.state != "idle"):
            if surplus <= 0:
                break
            if not worker.extra and not worker.actor_id and worker.state in ("idle", "starting"):
                worker.state = "stopping"
                out.append(StopWorker(worker.worker_id))
                surplus -= 1
        return out

    def validate_state(self) -> None:
        """Check the invariants (tests call this after each step): what resources say is in
        use is exactly what running tasks and started actors hold; every queued task is
        tracked and waits for nothing; every run belongs to a task on its worker."""
        held: dict[str, float] = {}
        holders = [t.held for t in self.tasks.values() if t.held]
        holders += [a.needs for a in self.actors.values() if a.holding]
        for needs in holders:
            for name, amount in needs.items():
                held[name] = held.get(name, 0.0) + amount
        for name in set(held) | set(self.resources.in_use):
            assert abs(held.get(name, 0.0) - self.resources.in_use.get(name, 0.0)) < 1e-6, \
                (name, held, self.resources.in_use)
        for task_id in (*self.queue, *self.special):
            assert task_id in self.tasks and not self.tasks[task_id].waiting_on, task_id
            assert self.tasks[task_id].seq is None and not self.tasks[task_id].held, task_id
        for seq, task_id in self._runs.items():
            task = self.tasks.get(task_id)
            assert task is not None and task.seq == seq, (seq, task_id)
            worker = self.workers.get(task.worker_id)  # type: ignore[arg-type]
            assert worker is not None and seq in worker.assigned, (seq, task.worker_id)

    # -- internals ---------------------------------------------------------------------------

    def _live_regular_count(self) -> int:
        return sum(1 for w in self.workers.values()
                   if not w.extra and not w.actor_id and w.state not in ("stopping", "dead"))

    def _active_count(self) -> int:
        return sum(1 for w in self.workers.values()
                   if not w.actor_id and w.state in ("idle", "busy", "starting"))

    def _dispatch(self) -> list[Instruction]:
        out: list[Instruction] = self._start_waiting_actors() if self.waiting_actors else []
        for worker_id, pinned in self.pinned.items():
            worker = self.workers.get(worker_id)
            if pinned and worker is not None and worker.state == "idle" and \
                    self.resources.fits(self.tasks[pinned[0]].needs):
                out.append(self._assign(worker, pinned.popleft()))
        if not (self.queue or self.special):
            return out
        for worker in self.workers.values():
            if worker.state == "idle" and not worker.actor_id:
                if self.special:
                    task_id = self._next_task(take=True)
                elif self.queue and self.resources.fits(ONE_CPU):  # the common case, inline
                    task_id = self.queue.popleft()
                else:
                    task_id = None
                if task_id is None:
                    break
                out.append(self._assign(worker, task_id))
        if self.queue and self._depth(self.queue[0]) > 1:
            self._prefetch(out)
        return out + self._extra_needed()

    def _prefetch(self, out: list[Instruction]) -> None:
        """Send short tasks ahead to busy workers running short tasks, up to their depth
        each, the least loaded first; each takes over the CPU of the run ahead of it when
        that one ends."""
        takers: list[tuple[WorkerState, int]] = []
        for worker in self.workers.values():
            if worker.state == "busy" and not worker.actor_id:
                depth = self._depth(self._runs.get(worker.assigned[0]))
                if len(worker.assigned) < depth:
                    takers.append((worker, depth))
        queue = self.queue
        while takers and queue and self._depth(queue[0]) > 1:
            taker = min(takers, key=_load) if len(takers) > 1 else takers[0]
            worker, depth = taker
            out.append(self._assign(worker, queue.popleft(), hold=False))
            if len(worker.assigned) >= depth:
                takers.remove(taker)

    def _depth(self, task_id: str | None) -> int:
        """How many runs a worker running ``task_id`` may hold: more than one only while it
        runs a short task (see ``prefetch_depth``)."""
        task = self.tasks.get(task_id) if task_id else None
        if task is None or task.spec.actor_id or task.spec.kind == "cell":
            return 1
        return self._depths.get(task.spec.function_hash, 1)

    def _next_task(self, *, take: bool = False) -> str | None:
        """The oldest queued task that fits the free resources (taken off its queue if
        ``take``), or None."""
        candidate: str | None = None
        if self.queue and self.resources.fits(ONE_CPU):
            candidate = self.queue[0]
        for task_id in self.special:
            if candidate is not None and self._order(task_id) > self._order(candidate):
                break
            if self.resources.fits(self.tasks[task_id].needs):
                candidate = task_id
                break
        if take and candidate is not None:
            if self.queue and self.queue[0] == candidate:
                self.queue.popleft()
            else:
                self.special.remove(candidate)
        return candidate

    def _let_go(self, task: TaskState) -> None:
        """Give back what a task held (it finished, failed, or its worker died)."""
        if task.held:
            self.resources.release(task.held, task.gpu_ids)
            task.held, task.gpu_ids = NOTHING, ()

    def _take_over_cpu(self, worker: WorkerState) -> None:
        """The next run on a worker was sent ahead (pipelined) holding nothing: it takes the
        CPU its predecessor just gave back."""
        if not worker.assigned:
            return
        task = self.tasks.get(self._runs.get(worker.assigned[0], ""))
        if task is not None and not task.held and task.needs is ONE_CPU:
            self.resources.acquire(ONE_CPU)
            task.held = ONE_CPU

    def _assign(self, worker: WorkerState, task_id: str, *, hold: bool = True) -> Dispatch:
        task = self.tasks[task_id]
        seq = self._next_seq
        self._next_seq += task.seqs
        task.seq, task.worker_id = seq, worker.worker_id
        if hold and task.needs:
            task.gpu_ids = self.resources.acquire(task.needs)
            task.held = task.needs
        worker.state = "busy"
        worker.assigned.append(seq)
        self._runs[seq] = task_id
        gpu_ids = task.gpu_ids
        if task.spec.kind == "actor_create":
            actor = self.actors.get(task.spec.actor_id)
            gpu_ids = actor.gpu_ids if actor is not None else ()
        return Dispatch(worker.worker_id, seq, task.spec, gpu_ids)

    # -- actors --------------------------------------------------------------------------------

    def create_actor(self, spec: TaskSpec, class_name: str, max_restarts: int,
                     max_task_retries: int, needs: Needs | None = None,
                     concurrency: int = 1) -> list[Instruction]:
        """Start a dedicated worker; the creation task runs there first, then the calls.

        An actor that asks for resources holds them for its whole life; until they are
        free it waits, as in Ray.
        """
        needs = dict(needs or {})
        why = self.infeasible(needs) if needs else None
        if why is not None:
            return [FailTask(spec, "infeasible", f"{class_name} can never start here: {why}")]
        self.actors[spec.actor_id] = ActorState(
            spec, class_name, max_restarts, max_task_retries, needs=needs,
            in_flight=ACTOR_IN_FLIGHT + concurrency - 1)  # its socket stays short either way
        self._track(spec, "driver")
        self.waiting_actors.append(spec.actor_id)
        return self._start_waiting_actors()

    def _start_waiting_actors(self) -> list[Instruction]:
        out: list[Instruction] = []
        for actor_id in list(self.waiting_actors):
            actor = self.actors.get(actor_id)
            if actor is None or actor.state == "dead":
                self.waiting_actors.remove(actor_id)
            elif self.resources.fits(actor.needs):
                self.waiting_actors.remove(actor_id)
                actor.gpu_ids = self.resources.acquire(actor.needs)
                actor.holding = True
                out.append(StartWorker(actor_id=actor_id))
        return out

    def _actor_gone(self, actor: ActorState) -> list[Instruction]:
        """An actor that will not run again gives back what it held, for others to use."""
        if not actor.holding:
            return []
        self.resources.release(actor.needs, actor.gpu_ids)
        actor.holding, actor.gpu_ids = False, ()
        return self._dispatch()

    def _submit_actor_call(self, spec: TaskSpec, caller: str) -> list[Instruction]:
        actor = self.actors.get(spec.actor_id)
        if actor is None or actor.state == "dead":
            reason = actor.death if actor is not None else "the actor does not exist (any more)"
            return [FailTask(spec, "actor_died", reason)]
        task = self._track(spec, caller)
        task.retries_left = actor.task_retries  # max_task_retries: reruns after a restart
        actor.queues.setdefault(caller, deque()).append(spec.task_id)
        return self._dispatch_actor(actor)

    def _dispatch_actor(self, actor: ActorState) -> list[Instruction]:
        """Send every call that is next in its caller's order and has its arguments ready."""
        worker = self.workers.get(actor.worker_id) if actor.worker_id is not None else None
        if worker is None or worker.state in ("starting", "stopping") or actor.state == "dead":
            return []
        out: list[Instruction] = []
        if not actor.created:
            creation = self.tasks.get(actor.create.task_id)
            if creation is None or creation.waiting_on:
                return out
            actor.created = True
            actor.state = "alive"
            out.append(self._assign(worker, actor.create.task_id))
        for queue in actor.queues.values():
            while queue and not self.tasks[queue[0]].waiting_on \
                    and len(worker.assigned) < actor.in_flight:
                out.append(self._assign(worker, queue.popleft()))
        return out

    def actor_creation_failed(self, actor_id: str, reason: str) -> list[Instruction]:
        """The constructor raised: the actor is dead; queued calls fail with the reason."""
        actor = self.actors.get(actor_id)
        if actor is None:
            return []
        actor.restarts_left = 0
        return self._mark_dead(actor, reason)

    def kill_actor(self, actor_id: str, *, no_restart: bool = True,
                   reason: str = "") -> list[Instruction]:
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return []
        if no_restart:
            actor.restarts_left = 0
            actor.death = reason or f"the actor {actor.class_name} was killed with kill()"
            actor.state = "dead"  # at once: new calls fail now, sent ones when it exits
        if actor.worker_id is None or actor.worker_id not in self.workers:
            return self._mark_dead(actor, actor.death)
        return [KillWorker(actor.worker_id)]

    def release_actor(self, actor_id: str) -> list[Instruction]:
        """No handle to the actor is left: stop it once its queued calls are done."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            self.actors.pop(actor_id, None)
            return []
        actor.releasing = True
        return self._maybe_stop_actor(actor)

    def _maybe_stop_actor(self, actor: ActorState) -> list[Instruction]:
        worker = self.workers.get(actor.worker_id) if actor.worker_id is not None else None
        if not actor.releasing or actor.queued or (worker is not None and worker.assigned):
            return []
        actor.state = "dead"
        actor.death = f"the actor {actor.class_name} was stopped: no handle to it was left"
        self.actors.pop(actor.create.actor_id, None)
        freed = self._actor_gone(actor)
        if worker is None:
            return freed
        worker.state = "stopping"
        return [StopWorker(worker.worker_id), *freed]

    def _actor_died(self, actor: ActorState, worker: WorkerState,
                    describe: str) -> list[Instruction]:
        """Restart from the constructor while restarts are left; else fail every call."""
        if actor.state == "dead" or worker.state == "stopping":
            return self._mark_dead(actor, actor.death or describe, worker)
        reason = actor.death or f"the actor {actor.class_name}'s {describe}"
        if actor.restarts_left <= 0:
            return self._mark_dead(actor, reason, worker)
        actor.restarts_left -= 1
        actor.restarts += 1
        out: list[Instruction] = []
        sent = [self.tasks[t] for seq in worker.assigned
                if (t := self._runs.pop(seq, None)) and t in self.tasks]
        for index, task in enumerate(sent):
            task.worker_id = task.seq = None
            if task.spec.kind == "actor_create":
                continue  # tracked again below
            if task.cancel_requested:  # cancel(force=True) killed it: a cancel, not a death
                del self.tasks[task.spec.task_id]
                out.append(FailTask(task.spec, "cancelled", "the call was cancelled"))
                continue
            if index == 0:  # it was running when the process died
                if task.retries_left <= 0:
                    del self.tasks[task.spec.task_id]
                    out.append(FailTask(task.spec, "actor_died", reason))
                    continue
                task.retries_left -= 1
            actor.queues.setdefault(task.caller, deque()).append(task.spec.task_id)
        for caller, queue in actor.queues.items():  # back in submission order
            actor.queues[caller] = deque(sorted(queue, key=self._order))
        actor.created = False
        actor.state = "starting"
        if actor.create.task_id not in self.tasks:
            # Run the constructor again; the actor's id already has its value, so no result.
            self._track(dataclasses.replace(actor.create, return_ids=()), "driver")
        out.append(StartWorker(actor_id=actor.create.actor_id))
        return out

    def _order(self, task_id: str) -> int:
        task = self.tasks.get(task_id)
        return task.order if task is not None else 0

    def _mark_dead(self, actor: ActorState, reason: str,
                   worker: WorkerState | None = None) -> list[Instruction]:
        """Fail every call sent or queued; stop the worker if it still runs."""
        actor.state = "dead"
        actor.death = reason
        out: list[Instruction] = []
        if worker is None and actor.worker_id is not None:
            worker = self.workers.get(actor.worker_id)
        doomed: list[str] = []
        if worker is not None:
            doomed.extend(t for seq in list(worker.assigned) if (t := self._runs.pop(seq, None)))
            worker.assigned.clear()
            if worker.state != "stopping" and worker.worker_id in self.workers:
                worker.state = "stopping"
                out.append(StopWorker(worker.worker_id))
        for queue in actor.queues.values():
            doomed.extend(queue)
            queue.clear()
        if actor.create.task_id in self.tasks:
            doomed.append(actor.create.task_id)
        for task_id in dict.fromkeys(doomed):
            task = self.tasks.pop(task_id, None)
            if task is not None and task.cancel_requested:
                out.append(FailTask(task.spec, "cancelled", "the call was cancelled"))
            elif task is not None:
                out.append(FailTask(task.spec, "actor_died", reason))
        return out + self._actor_gone(actor)


def prefetch_depth(typical: float) -> int:
    """How many runs a worker may hold while it runs a function that typically takes
    ``typical`` seconds: one if that is not short, else about PREFETCH_WORK of them."""
    if typical >= PREFETCH_BELOW:
        return 1
    return min(PREFETCH_DEPTH, max(2, int(PREFETCH_WORK / max(typical, 1e-6))))


def _load(taker: tuple[WorkerState, int]) -> int:
    return len(taker[0].assigned)
