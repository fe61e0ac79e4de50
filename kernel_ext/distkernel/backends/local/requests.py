"""Calls from inside tasks: ``get`` / ``wait`` / ``put`` / ``.remote`` / ``cancel`` in a worker.

A worker sends one of the ``Request`` messages; those with a ``request_id`` block
it until the ``Reply``, the others (submit, cancel, kill, release) do not.
``handle`` dispatches on the message's class. A ``get`` or ``wait`` that cannot
be answered yet is parked here and answered when the objects are sealed; while
it is parked the worker counts as blocked, so the scheduler may start an extra
worker for the children it waits on. Runs on whichever thread reads the
workers' sockets (``reader``), with the engine's lock held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from distkernel.backends.local.actor_names import ActorNames
from distkernel.backends.local.memory import Memory
from distkernel.core import refs
from distkernel.core.exceptions import DistkernelError, ObjectLostError, ObjectStoreFullError
from distkernel.core.interrupts import Sleepers
from distkernel.core.protocol import (
    ActorOptions,
    AllocateRequest,
    CancelRequest,
    CreateActorRequest,
    GetActorRequest,
    GetRequest,
    KillActorRequest,
    PutRequest,
    ReleaseRequest,
    Reply,
    Request,
    SharedValue,
    SubmitRequest,
    TaskSpec,
    Value,
    WaitRequest,
)
from distkernel.engine.scheduler import Instruction, Scheduler
from distkernel.store.object_store import ObjectStore
from distkernel.store.serialization import dumps


class RequestHost(Protocol):
    """What answering a worker's requests needs of the engine's lock-held state
    (``state.EngineCore``): its tables, and the steps every submission takes."""

    store: ObjectStore
    memory: Memory
    scheduler: Scheduler
    sleepers: Sleepers
    actor_names: ActorNames
    actor_meta: dict[str, ActorOptions]
    functions: dict[str, bytes]
    producers: dict[str, str]

    def add_worker_ref(self, worker_id: int, object_id: str) -> None: ...

    def cancel_run(self, task_id: str, force: bool) -> list[Instruction]: ...

    def adopt(self, worker_id: int, value: Value) -> Value: ...

    def error_value_copy(self, value: Value) -> Value: ...

    def execute(self, instructions: list[Instruction]) -> None: ...

    def forget(self, freed: list[str]) -> None: ...

    def lost_message(self, object_id: str) -> str: ...

    def named_actor_ref(self, name: str, namespace: str | None) -> str | None: ...

    def register_task(self, spec: TaskSpec, contained: Sequence[str], args_id: str,
                      bytes_in: int, *, caller: str = "driver",
                      actor: ActorOptions | None = None) -> None: ...

    def send(self, worker_id: int, message: Any) -> None: ...

    def stop_actor(self, actor_id: str, no_restart: bool) -> None: ...

_R = TypeVar("_R", bound=Request)


@dataclass(slots=True)
class _Parked(Generic[_R]):
    """A request answered later: a get or wait for objects, an allocation for memory."""

    worker_id: int
    request: _R


class RequestHandler:
    def __init__(self, backend: RequestHost) -> None:
        self._backend = backend
        self._parked: list[_Parked[GetRequest | WaitRequest]] = []
        self._waiting_room: list[_Parked[AllocateRequest]] = []  # waiting for memory
        self._handlers: dict[type[Request], Callable[[int, Any], list[Instruction]]] = {
            GetRequest: self._get,
            WaitRequest: self._wait,
            PutRequest: self._put,
            SubmitRequest: self._submit,
            CreateActorRequest: self._create_actor,
            KillActorRequest: self._kill_actor,
            CancelRequest: self._cancel,
            GetActorRequest: self._get_actor,
            AllocateRequest: self._allocate,
            ReleaseRequest: self._release,
        }

    def handle(self, worker_id: int, request: Request) -> list[Instruction]:
        handler = self._handlers.get(type(request))
        if handler is None:
            msg = f"worker {worker_id} sent a request of unknown kind: {request!r}"
            raise TypeError(msg)
        return handler(worker_id, request)

    def _lost(self, object_ids: tuple[str, ...]) -> list[str]:
        return [i for i in object_ids if i not in self._backend.store]

    def _ready(self, object_ids: tuple[str, ...]) -> list[str]:
        store = self._backend.store
        return [i for i in object_ids if store.value(i) is not None]

    def _get(self, worker_id: int, request: GetRequest) -> list[Instruction]:
        if self._try_get(worker_id, request):
            return []
        self._parked.append(_Parked(worker_id, request))
        return self._backend.scheduler.worker_blocked(worker_id)

    def _wait(self, worker_id: int, request: WaitRequest) -> list[Instruction]:
        if not self._try_wait(worker_id, request):
            self._parked.append(_Parked(worker_id, request))
        return []

    def _try_answer(self, worker_id: int, request: GetRequest | WaitRequest) -> bool:
        if isinstance(request, GetRequest):
            return self._try_get(worker_id, request)
        return self._try_wait(worker_id, request)

    def _try_get(self, worker_id: int, request: GetRequest) -> bool:
        backend = self._backend
        lost = self._lost(request.object_ids)
        if lost:
            error = ObjectLostError(backend.lost_message(lost[0]))
            backend.send(worker_id, Reply(request.request_id, error=dumps(error)))
            return True
        ready = self._ready(request.object_ids)
        failed = [i for i in ready if backend.store.value(i).is_error]  # type: ignore[union-attr]
        if len(ready) < len(request.object_ids) and not failed:
            return False
        # An error is raised as soon as it is in, without waiting for the others.
        values = tuple((i, backend.store.value(i)) for i in failed or request.object_ids)
        backend.memory.sent.hold(worker_id, self._run_of(worker_id), (v for _, v in values))
        backend.send(worker_id, Reply(request.request_id, values=values))  # type: ignore[arg-type]
        return True

    def _try_wait(self, worker_id: int, request: WaitRequest) -> bool:
        backend = self._backend
        ready = [i for i in request.object_ids
                 if backend.store.value(i) is not None or i not in backend.store]
        if len(ready) >= request.num_returns or request.timeout == 0:
            backend.send(worker_id, Reply(request.request_id, ready=tuple(ready)))
            return True
        return False

    def objects_ready(self, object_ids: tuple[str, ...]) -> None:
        """Answer parked requests that these objects complete."""
        if not self._parked:
            return
        wanted = set(object_ids)
        still: list[_Parked[GetRequest | WaitRequest]] = []
        for parked in self._parked:
            if wanted.intersection(parked.request.object_ids) and \
                    self._try_answer(parked.worker_id, parked.request):
                if isinstance(parked.request, GetRequest):
                    self._backend.execute(
                        self._backend.scheduler.worker_unblocked(parked.worker_id))
                continue
            still.append(parked)
        self._parked = still

    def worker_gone(self, worker_id: int) -> None:
        self._parked = [p for p in self._parked if p.worker_id != worker_id]
        self._waiting_room = [p for p in self._waiting_room if p.worker_id != worker_id]
        self.retry_allocations()

    def _run_of(self, worker_id: int) -> int:
        """The run a reply belongs to: the one in progress, else the worker's next one."""
        state = self._backend.scheduler.workers.get(worker_id)
        running = state.running if state is not None else None
        return running if running is not None else self._backend.scheduler.next_seq

    def _allocate(self, worker_id: int, request: AllocateRequest) -> list[Instruction]:
        """Room for a large value the worker is about to write (a result, a put, arguments).

        When the store is full of values other workers are still writing, the request
        waits: once written they can be spilled. It fails when nobody else writes.
        """
        error = self._try_allocate(worker_id, request)
        if error is not None:
            self._wait_or_fail(_Parked(worker_id, request), error)
        return []

    def _try_allocate(self, worker_id: int, request: AllocateRequest) -> BaseException | None:
        """Lend room and answer; or the error that stopped it."""
        backend = self._backend
        size = request.size
        if type(size) is not int or size <= 0:
            return DistkernelError(f"cannot allocate {size!r} bytes")
        try:
            place = backend.memory.allocate(size)
        except (ObjectStoreFullError, OSError) as exc:
            return exc
        backend.memory.lent.add(worker_id, place)
        backend.send(worker_id, Reply(request.request_id, place=place))
        return None

    def _wait_or_fail(self, parked: _Parked[AllocateRequest], error: BaseException) -> None:
        waiting = {p.worker_id for p in self._waiting_room} | {parked.worker_id}
        others_writing = self._backend.memory.lent.writers() - waiting
        if isinstance(error, ObjectStoreFullError) and others_writing and \
                parked.request.size <= self._backend.store.capacity:
            self._waiting_room.append(parked)
        else:
            self._backend.send(parked.worker_id,
                               Reply(parked.request.request_id, error=dumps(error)))

    @property
    def waiting(self) -> bool:
        """Allocations wait for memory."""
        return bool(self._waiting_room)

    def retry_allocations(self) -> None:
        """Memory may have come free: try the waiting allocations again, in order."""
        if not self._waiting_room:
            return
        waiting, self._waiting_room = self._waiting_room, []
        for parked in waiting:
            error = self._try_allocate(parked.worker_id, parked.request)
            if error is not None:
                self._wait_or_fail(parked, error)

    def _release(self, worker_id: int, request: ReleaseRequest) -> list[Instruction]:
        place = self._backend.memory.lent.give_back(worker_id, request.place)
        if place is not None:
            self._backend.memory.give_back(place)
        return []

    def _put(self, worker_id: int, request: PutRequest) -> list[Instruction]:
        backend = self._backend
        object_id = request.object_id
        value = backend.adopt(worker_id, request.value)
        refused = None
        if value.is_error:  # the store is full, or the value names room not lent
            refused = value.header  # type: ignore[union-attr]
        elif type(object_id) is not str or object_id in backend.store:
            refused = dumps(DistkernelError("put(): the object id is missing or taken"))
        if refused is not None:
            backend.store.discard(value)
            backend.send(worker_id, Reply(request.request_id, error=refused))
            return []
        # Counted now, for the ObjectRef the worker makes from this reply (ObjectRef.counted).
        backend.store.expect(object_id)
        backend.add_worker_ref(worker_id, object_id)
        backend.forget(backend.store.seal(object_id, value))
        backend.send(worker_id, Reply(request.request_id))
        return []

    def _get_actor(self, worker_id: int, request: GetActorRequest) -> list[Instruction]:
        backend = self._backend
        actor_id = backend.named_actor_ref(request.name, request.namespace)
        if actor_id is None:
            backend.send(worker_id, Reply(request.request_id))
            return []
        backend.add_worker_ref(worker_id, actor_id)  # for the handle the worker makes
        backend.send(worker_id, Reply(request.request_id, actor_id=actor_id,
                                      actor=backend.actor_meta[actor_id]))
        return []

    def _submit(self, worker_id: int, request: SubmitRequest) -> list[Instruction]:
        self._keep_function(request.spec, request.function)
        self._register(worker_id, request.spec, None)
        return []

    def _create_actor(self, worker_id: int, request: CreateActorRequest) -> list[Instruction]:
        self._keep_function(request.spec, request.function)
        if request.actor.name and not self._name_free(worker_id, request):
            return []
        if self._register(worker_id, request.spec, request.actor) and \
                request.needs_reply:  # a named actor: the worker waits for its id
            self._backend.send(worker_id, Reply(request.request_id,
                                                actor_id=request.spec.actor_id))
        return []

    def _keep_function(self, spec: TaskSpec, function: bytes | None) -> None:
        """A worker sends a function (or class) with its first submission only."""
        if function is not None:
            self._backend.functions.setdefault(spec.function_hash, function)

    def _register(self, worker_id: int, spec: TaskSpec, actor: ActorOptions | None) -> bool:
        """Hand a task (or an actor's creation) from a worker to the scheduler; False when
        its arguments were refused (it fails with the reason, and never runs)."""
        backend = self._backend
        for return_id in spec.return_ids:
            # Counted now, for the worker's ObjectRef.counted of each result.
            backend.store.expect(return_id)
            backend.add_worker_ref(worker_id, return_id)
        args_id = ""
        if isinstance(spec.args, SharedValue):  # large arguments, written by the worker
            value = backend.adopt(worker_id, spec.args)
            if value.is_error:
                self._fail_unrun(spec, value)
                return False
            args_id = refs.new_id()
            backend.store.expect(args_id).pins += 1
            backend.store.seal(args_id, value)
        backend.register_task(spec, spec.args.contained, args_id, spec.args.nbytes,
                              caller=f"worker-{worker_id}", actor=actor)
        return True

    def _name_free(self, worker_id: int, request: CreateActorRequest) -> bool:
        """A named actor created from a task: go on (True), or answer with the live actor
        of that name (get_if_exists) or the error that it is taken (False)."""
        backend, spec = self._backend, request.spec
        try:
            existing = backend.actor_names.claim(request.actor)
        except ValueError as exc:
            reply = Reply(request.request_id, error=dumps(exc))
        else:
            if existing is None:
                return True
            backend.add_worker_ref(worker_id, existing)
            reply = Reply(request.request_id, actor_id=existing)
        if isinstance(spec.args, SharedValue):  # its arguments are not needed after all
            backend.store.discard(backend.adopt(worker_id, spec.args))
        backend.send(worker_id, reply)
        return False

    def _fail_unrun(self, spec: TaskSpec, error: Value) -> None:
        """A submission refused before it was registered: its results are the error."""
        backend = self._backend
        for return_id in spec.return_ids:
            backend.forget(backend.store.seal(return_id, backend.error_value_copy(error)))
        backend.store.discard(error)
        self.objects_ready(spec.return_ids)
        backend.sleepers.ready(spec.return_ids)

    def _kill_actor(self, worker_id: int, request: KillActorRequest) -> list[Instruction]:
        self._backend.stop_actor(request.actor_id, request.no_restart)
        return []

    def _cancel(self, worker_id: int, request: CancelRequest) -> list[Instruction]:
        backend = self._backend
        task_id = backend.producers.get(request.object_id)
        if task_id is None:
            return []
        return backend.cancel_run(task_id, request.force)
