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

from distkernel.exceptions import ObjectLostError, ObjectStoreFullError
from distkernel.object_store import object_id_of_segment, remove_segment
from distkernel.protocol import Reply, Request, SharedValue
from distkernel.scheduler import Instruction
from distkernel.serialization import dumps

if TYPE_CHECKING:
    from distkernel.backends.local_core import EngineCore


@dataclass(slots=True)
class _Parked:
    worker_id: int
    request: Request


class RequestHandler:
    def __init__(self, backend: EngineCore) -> None:
        self._backend = backend
        self._parked: list[_Parked] = []

    def handle(self, worker_id: int, request: Request) -> list[Instruction]:
        op = request.op
        if op == "get" or op == "wait":
            return self._get_or_wait(worker_id, request)
        if op == "put":
            return self._put(worker_id, request)
        if op == "submit" or op == "create_actor":
            return self._submit(worker_id, request)
        if op == "kill_actor":
            return self._backend.scheduler.kill_actor(request.object_ids[0],
                                                      no_restart=request.force)
        if op == "cancel":
            return self._cancel(request)
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
            if len(self._ready(request)) < len(request.object_ids):
                return False
            values = tuple((i, backend.store.value(i)) for i in request.object_ids)
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

    def _put(self, worker_id: int, request: Request) -> list[Instruction]:
        backend = self._backend
        value = request.value
        object_id = request.object_ids[0]
        try:
            backend.store.reserve(value.nbytes)  # type: ignore[union-attr]
        except ObjectStoreFullError as exc:
            if isinstance(value, SharedValue):
                remove_segment(value.segment)
            backend.send(worker_id, Reply(request.request_id, error=dumps(exc)))
            return []
        # Counted now, for the ObjectRef the worker makes from this reply (ObjectRef.counted).
        backend.store.expect(object_id).refs += 1
        backend.forget(backend.store.seal(object_id, value))  # type: ignore[arg-type,union-attr]
        backend.send(worker_id, Reply(request.request_id))
        return []

    def _submit(self, worker_id: int, request: Request) -> list[Instruction]:
        backend = self._backend
        spec = request.spec
        assert spec is not None
        if request.function is not None:
            backend.functions.setdefault(spec.function_hash, request.function)
        args_id = ""
        if isinstance(spec.args, SharedValue):  # large arguments came in a segment
            args_id = object_id_of_segment(spec.args.segment)
            value = backend.adopt(spec.args)
            backend.store.expect(args_id).pins += 1
            backend.store.seal(args_id, value)
        for return_id in spec.return_ids:
            # Counted now, for the worker's ObjectRef.counted of each result.
            backend.store.expect(return_id).refs += 1
        backend.register_task(spec, spec.args.contained, args_id, spec.args.nbytes,
                              caller=f"worker-{worker_id}", actor=request.actor)
        return []

    def _cancel(self, request: Request) -> list[Instruction]:
        backend = self._backend
        task_id = backend.producers.get(request.object_ids[0])
        if task_id is None:
            return []
        return backend.scheduler.cancel(task_id, force=request.force)
