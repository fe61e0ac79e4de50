"""The public API inside a worker: every call becomes a request message to the driver.

``get`` and ``wait`` block on the reply (the driver may start an extra worker
meanwhile, so a task can wait for its own children); ``.remote`` is sent
without waiting, with ids made here, so a task can fan out quickly.

A large value made here (a result, a put, a task's arguments) is written into
room the driver set aside for it first: ``allocate`` -> ``Place`` -> one
``pwrite`` per part -> the value is handed over in a message. A worker never
creates shared-memory files, so nothing it does can outlive its driver or
outgrow the store. Room a cancel left unused is given back after the run.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from collections.abc import Sequence
from typing import Any, Union

from distkernel.core import config
from distkernel.core.exceptions import GetTimeoutError
from distkernel.core.interrupts import DEFERRED_SIGINT
from distkernel.core.protocol import (
    ActorOptions,
    AllocateRequest,
    CancelRequest,
    CreateActorRequest,
    FunctionPayload,
    GetActorRequest,
    GetRequest,
    KillActorRequest,
    Place,
    PutRequest,
    ReleaseRequest,
    Reply,
    SharedValue,
    SubmitRequest,
    TaskOptions,
    Value,
    WaitRequest,
)
from distkernel.core.refs import ObjectRef, new_id
from distkernel.engine import specs
from distkernel.engine.worker.calls import CURRENT_CALL, ClientHost
from distkernel.store import object_store
from distkernel.store.serialization import Serialized, serialize

#: The requests a task waits on: the driver answers each with a ``Reply``.
_Answered = Union[GetRequest, WaitRequest, PutRequest, CreateActorRequest, GetActorRequest,
                  AllocateRequest]


class WorkerClient:
    """Client (see ``context``) for code running inside a worker process."""

    def __init__(self, worker: ClientHost) -> None:
        self._worker = worker
        self.cluster_id = worker.cluster_id
        self._request_ids = itertools.count(1)
        self._functions_sent: set[str] = set()
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        self._unsent: dict[tuple[str, int], tuple[int | None, Place]] = {}  # lent, not handed over

    def job_id(self) -> str:
        return self.cluster_id  # one job, one node: the cluster, as in the driver

    def node_id(self) -> str:
        return self.cluster_id

    @property
    def actor_id(self) -> str:
        """The id of the actor this process hosts ("" in a task's worker)."""
        return self._worker.actor_id

    def task_id(self) -> str:
        """The task or actor call running in this thread (or coroutine), "" between runs."""
        return CURRENT_CALL.get() or self._worker.current_task

    def gpu_ids(self) -> list[str]:
        """The GPU devices the running task (or this actor) was given."""
        return self._worker.gpu_ids()

    def _call(self, request: _Answered, timeout: float | None = None) -> Reply | None:
        """Send and wait for the reply, reading the socket meanwhile (see ``worker_io``)."""
        worker = self._worker
        worker.link.send(request)
        # Only the main thread runs the SIGINT handler: it may be cancelled while waiting.
        interruptible = threading.get_ident() == self._main
        reply = worker.mailbox.reply(request.request_id, timeout, interruptible)
        if reply is None:
            return None
        if reply.error is not None:
            raise pickle.loads(reply.error)
        return reply

    def _next_id(self) -> int:
        with self._lock:
            return next(self._request_ids)

    def put(self, value: Any) -> ObjectRef:
        object_id = new_id()
        stored = self.store(serialize(value))
        request = PutRequest(self._next_id(), object_id, stored)
        self.handed_over((stored,))
        self._call(request)
        return ObjectRef.counted(object_id, self.cluster_id)

    # -- large values: room from the driver --------------------------------------------------

    def store(self, serialized: Serialized, *, is_error: bool = False) -> Value:
        """A value for the driver to own: inline if small, else written into lent room."""
        if serialized.nbytes < config.INLINE_THRESHOLD:
            return object_store.to_inline(serialized, is_error=is_error)
        size, _ = object_store.layout(serialized)
        place = self._allocate(size)
        try:
            path = self._worker.space.segment_path(place.segment)
            return object_store.write_to_file(path, place, serialized, is_error=is_error)
        except BaseException:
            self._give_back(place)
            raise

    def _allocate(self, size: int) -> Place:
        """Ask the driver for room; a cancel waits until the answer is in (and noted)."""
        with DEFERRED_SIGINT:
            reply = self._call(AllocateRequest(self._next_id(), size))
            place = reply.place  # type: ignore[union-attr]
            if not isinstance(place, Place) or not self._worker.space.owns(place.segment):
                msg = f"the driver answered an allocation with {place!r}"
                raise RuntimeError(msg)
            with self._lock:
                self._unsent[(place.segment, place.offset)] = (threading.get_ident(), place)
        return place

    def handed_over(self, values: Sequence[Value]) -> None:
        """These values are on their way to the driver, which owns their room now."""
        if not self._unsent:  # nothing lent: the common case, without the lock
            return
        with self._lock:
            for value in values:
                if isinstance(value, SharedValue):
                    self._unsent.pop((value.segment, value.offset), None)

    def _give_back(self, place: Place) -> None:
        with self._lock:
            self._unsent.pop((place.segment, place.offset), None)
        self._worker.link.send(ReleaseRequest(place))

    def give_back_unsent(self) -> None:
        """After a run: room the main thread was lent but never handed over (a cancel
        landed between the allocation and the hand-over) goes back to the driver."""
        if not self._unsent:
            return
        with self._lock:
            left = [place for thread, place in self._unsent.values() if thread == self._main]
        for place in left:
            self._give_back(place)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        ids = tuple(r.hex() for r in refs)
        reply = self._call(GetRequest(self._next_id(), ids), timeout)
        if reply is None:
            msg = (f"get() timed out after {timeout} s inside a task; the tasks it waits for "
                   f"keep running")
            raise GetTimeoutError(msg)
        values = dict(reply.values)
        for value in values.values():
            if value.is_error:  # the first error in is raised, as in the driver
                self._worker.load(value)
        return [self._worker.load(values[i]) for i in ids]

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ids = tuple(r.hex() for r in refs)
        reply = self._call(WaitRequest(self._next_id(), ids, num_returns, timeout), timeout)
        if reply is None:  # timed out: ask for what is ready right now
            reply = self._call(WaitRequest(self._next_id(), ids, num_returns, 0))
        chosen = set(reply.ready[:num_returns])  # type: ignore[union-attr]
        return ([r for r in refs if r.hex() in chosen], [r for r in refs if r.hex() not in chosen])

    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, actor_id: str = "", method: str = "") -> list[ObjectRef]:
        spec = specs.prepare_call(function, args, kwargs, options, self._store_arguments,
                                  kind="actor_method" if actor_id else "task",
                                  actor_id=actor_id, method=method).spec
        self._send_submit(SubmitRequest(spec, self._first_time(function)))
        return [ObjectRef.counted(i, self.cluster_id) for i in spec.return_ids]

    def create_actor(self, cls: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ObjectRef:
        spec = specs.prepare_call(cls, args, kwargs,
                                  TaskOptions(max_retries=0, name=options.class_name),
                                  self._store_arguments, kind="actor_create",
                                  actor_id=new_id()).spec
        if not options.name:
            self._send_submit(CreateActorRequest(0, spec, self._first_time(cls), options))
            return ObjectRef.counted(spec.actor_id, self.cluster_id)
        # A name may be taken (an error) or reused (get_if_exists): the driver says which.
        self.handed_over((spec.args,))
        reply = self._call(CreateActorRequest(self._next_id(), spec, cls.data, options))
        return ObjectRef.counted(reply.actor_id, self.cluster_id)  # type: ignore[union-attr]

    def named_actor(self, name: str,
                    namespace: str | None = None) -> tuple[ObjectRef, ActorOptions] | None:
        """The live actor named ``name`` (as the driver's engine answers it), or None."""
        reply = self._call(GetActorRequest(self._next_id(), name, namespace))
        if reply is None or not reply.actor_id or reply.actor is None:
            return None
        return ObjectRef.counted(reply.actor_id, self.cluster_id), reply.actor

    def kill_actor(self, actor_id: str, no_restart: bool) -> None:
        self._worker.link.send(KillActorRequest(actor_id, no_restart))

    def _store_arguments(self, serialized: Serialized) -> tuple[Value, str]:
        return self.store(serialized), ""  # the driver pins a stored value for the task

    def _first_time(self, function: FunctionPayload) -> bytes | None:
        """The pickled function, the first time this worker submits it (the driver keeps it)."""
        first_time = bool(function.data) and function.function_hash not in self._functions_sent
        self._functions_sent.add(function.function_hash)
        return function.data if first_time else None

    def _send_submit(self, request: SubmitRequest | CreateActorRequest) -> None:
        """Sent without waiting for an answer: the arguments are the driver's from now on."""
        self.handed_over((request.spec.args,))
        self._worker.link.send(request)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        self._worker.link.send(CancelRequest(ref.hex(), force))
