"""Calls from inside tasks: ``get`` / ``wait`` / ``put`` / ``.remote`` / ``cancel`` in a worker.

A worker sends a ``Request`` and (except for submit) blocks on the ``Reply``.
A ``get`` or ``wait`` that cannot be answered yet is parked here and answered
when the objects are sealed; while it is parked the worker counts as blocked,
so the scheduler may start an extra worker for the children it waits on.
Runs on whichever thread reads the workers' sockets (``local_io``), with the
backend's lock held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distkernel.core import refs
from distkernel.core.exceptions import DistkernelError, ObjectLostError, ObjectStoreFullError
from distkernel.core.protocol import Reply, Request, SharedValue, TaskSpec, Value
from distkernel.engine.scheduler import Instruction
from distkernel.store.serialization import dumps

if TYPE_CHECKING:
    from distkernel.backends.local.state import EngineCore


@dataclass(slots=True)
class _Parked:
    worker_id: int
    request: Request


class RequestHandler:
    def __init__(self, backend: EngineCore) -> None:
        self._backend = backend
        self._parked: list[_Parked] = []
        self._waiting_room: list[_Parked] = []  # allocations waiting for memory

    def handle(self, worker_id: int, request: Request) -> list[Instruction]:
        op = request.op
        if op == "get" or op == "wait":
            return self._get_or_wait(worker_id, request)
        if op == "put":
            return self._put(worker_id, request)
        if op == "submit" or op == "create_actor":
            return self._submit(worker_id, request)
        if op == "kill_actor":
            self._backend.stop_actor(request.object_ids[0], request.force)
            return []
        if op == "get_actor":
            return self._get_actor(worker_id, request)
        if op == "cancel":
            return self._cancel(request)
        if op == "allocate":
            return self._allocate(worker_id, request)
        if op == "release":
            place = self._backend.memory.lent.give_back(worker_id, request.place)
            if place is not None:
                self._backend.memory.give_back(place)
        return []

    def _lost(self, request: Request) -> list[str]:
        return [i for i in request.object_ids if i not in self._backend.store]

    def _ready(self, request: Request) -> list[str]:
        store = self._backend.store
        return [i for i in request.object_ids if store.value(i) is not None]

    def _get_or_wait(self, worker_id: int, request: Request) -> list[Instruction]:
        if self._try_answer(worker_id, request):
            return []
        self._parked.append(_Parked(worker_id, request))
        if request.op == "get":
            return self._backend.scheduler.worker_blocked(worker_id)
        return []

    def _try_answer(self, worker_id: int, request: Request) -> bool:
        backend = self._backend
        if request.op == "get":
            lost = self._lost(request)
            if lost:
                error = ObjectLostError(backend.lost_message(lost[0]))
                backend.send(worker_id, Reply(request.request_id, error=dumps(error)))
                return True
            ready = self._ready(request)
            failed = [i for i in ready if backend.store.value(i).is_error]  # type: ignore[union-attr]
            if len(ready) < len(request.object_ids) and not failed:
                return False
            # An error is raised as soon as it is in, without waiting for the others.
            values = tuple((i, backend.store.value(i)) for i in failed or request.object_ids)
            backend.memory.sent.hold(worker_id, self._run_of(worker_id), (v for _, v in values))
            backend.send(worker_id, Reply(request.request_id, values=values))  # type: ignore[arg-type]
            return True
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
        still: list[_Parked] = []
        for parked in self._parked:
            if wanted.intersection(parked.request.object_ids) and \
                    self._try_answer(parked.worker_id, parked.request):
                if parked.request.op == "get":
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

    def _allocate(self, worker_id: int, request: Request) -> list[Instruction]:
        """Room for a large value the worker is about to write (a result, a put, arguments).

        When the store is full of values other workers are still writing, the request
        waits: once written they can be spilled. It fails when nobody else writes.
        """
        error = self._try_allocate(worker_id, request)
        if error is not None:
            self._wait_or_fail(_Parked(worker_id, request), error)
        return []

    def _try_allocate(self, worker_id: int, request: Request) -> BaseException | None:
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

    def _wait_or_fail(self, parked: _Parked, error: BaseException) -> None:
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

    def _put(self, worker_id: int, request: Request) -> list[Instruction]:
        backend = self._backend
        object_id = request.object_ids[0] if request.object_ids else None
        value = backend.adopt(worker_id, request.value)  # type: ignore[arg-type]
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
        backend.store.expect(object_id)  # type: ignore[arg-type]
        backend.add_worker_ref(worker_id, object_id)  # type: ignore[arg-type]
        backend.forget(backend.store.seal(object_id, value))  # type: ignore[arg-type]
        backend.send(worker_id, Reply(request.request_id))
        return []

    def _get_actor(self, worker_id: int, request: Request) -> list[Instruction]:
        backend = self._backend
        name = request.object_ids[0] if request.object_ids else ""
        actor_id = backend.named_actor_ref(name, request.namespace)
        if actor_id is None:
            backend.send(worker_id, Reply(request.request_id))
            return []
        backend.add_worker_ref(worker_id, actor_id)  # for the handle the worker makes
        backend.send(worker_id, Reply(request.request_id, ready=(actor_id,),
                                      actor=backend.actor_meta[actor_id]))
        return []

    def _submit(self, worker_id: int, request: Request) -> list[Instruction]:
        backend = self._backend
        spec = request.spec
        assert spec is not None
        if request.function is not None:
            backend.functions.setdefault(spec.function_hash, request.function)
        if request.actor is not None and request.actor.name and \
                not self._name_free(worker_id, request):
            return []
        for return_id in spec.return_ids:
            # Counted now, for the worker's ObjectRef.counted of each result.
            backend.store.expect(return_id)
            backend.add_worker_ref(worker_id, return_id)
        args_id = ""
        if isinstance(spec.args, SharedValue):  # large arguments, written by the worker
            value = backend.adopt(worker_id, spec.args)
            if value.is_error:  # refused: the task fails with the reason, and never runs
                self._fail_unrun(spec, value)
                return []
            args_id = refs.new_id()
            backend.store.expect(args_id).pins += 1
            backend.store.seal(args_id, value)
        backend.register_task(spec, spec.args.contained, args_id, spec.args.nbytes,
                              caller=f"worker-{worker_id}", actor=request.actor)
        if request.needs_reply:  # a named actor: the worker waits for its id
            backend.send(worker_id, Reply(request.request_id, ready=spec.return_ids))
        return []

    def _name_free(self, worker_id: int, request: Request) -> bool:
        """A named actor created from a task: go on (True), or answer with the live actor
        of that name (get_if_exists) or the error that it is taken (False)."""
        backend, spec = self._backend, request.spec
        assert spec is not None and request.actor is not None
        try:
            existing = backend.actor_names.claim(request.actor)
        except ValueError as exc:
            reply = Reply(request.request_id, error=dumps(exc))
        else:
            if existing is None:
                return True
            backend.add_worker_ref(worker_id, existing)
            reply = Reply(request.request_id, ready=(existing,))
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

    def _cancel(self, request: Request) -> list[Instruction]:
        backend = self._backend
        task_id = backend.producers.get(request.object_ids[0])
        if task_id is None:
            return []
        return backend.scheduler.cancel(task_id, force=request.force)
