"""Everything that crosses a process boundary, as immutable dataclasses.

Driver and workers exchange these over one duplex pipe per worker, pickled with
the standard pickler (they hold only bytes, strings, numbers and tuples).

Messages are frozen for the type checker (mypy refuses any assignment to a field),
but built as plain slotted classes at run time: a frozen dataclass sets each field
through ``object.__setattr__``, five times slower, and several messages are made and
unpickled for every task (a task's round trip spent about 4 µs there).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

_F = TypeVar("_F")

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # the decorator only informs type checkers
    def dataclass_transform(**_options: Any) -> Callable[[_F], _F]:
        return lambda function: function

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def message(cls: type[_T]) -> type[_T]:
    """A slotted dataclass, frozen for type checkers, hashable by value, that pickles as
    ``(cls, fields)``: ~2x faster than the default reduction, and these cross a pipe for
    every task."""
    cls = dataclass(slots=True, unsafe_hash=True)(cls)
    names = tuple(f for f in cls.__slots__ if not f.startswith("__"))  # type: ignore[attr-defined]
    if not names:
        def reduce(self: Any) -> tuple[Any, ...]:
            return (cls, ())
    elif len(names) == 1:
        getter: Callable[[Any], Any] = operator.attrgetter(*names)

        def reduce(self: Any) -> tuple[Any, ...]:
            return (cls, (getter(self),))
    else:
        getter = operator.attrgetter(*names)

        def reduce(self: Any) -> tuple[Any, ...]:
            return (cls, getter(self))
    cls.__reduce__ = reduce  # type: ignore[method-assign,assignment]
    return cls

#: What a remote function's call runs as: a task, or the body of a ``%%remote`` cell.
FunctionTaskKind = Literal["task", "cell"]
#: What a task is (a ``TaskRecord``'s ``kind``, SPEC §6).
TaskKind = Literal[FunctionTaskKind, "actor_method", "actor_create"]
OutputStream = Literal["stdout", "stderr"]


# --- stored values -------------------------------------------------------------------------

@message
class InlineValue:
    """A small serialized value carried inside messages."""

    header: bytes
    buffers: tuple[bytes, ...] = ()
    contained: tuple[str, ...] = ()  # ids of ObjectRefs pickled inside the value
    is_error: bool = False  # the value is an exception that get() raises

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(len(b) for b in self.buffers)


@message
class SharedValue:
    """A large serialized value: the pickle header, then each buffer, 64-byte aligned.

    It lives in a region of the driver's arena (``segment`` names the chunk file in the
    shared-memory folder), or, once spilled, in a file of its own on disk (``segment``
    is then that file's path and ``offset`` is 0).
    """

    segment: str
    size: int
    header_len: int
    buffers: tuple[tuple[int, int], ...]  # (offset, length) of each out-of-band buffer
    contained: tuple[str, ...] = ()
    is_error: bool = False
    offset: int = 0  # where the value starts in the segment (page-aligned)
    spilled: bool = False

    @property
    def nbytes(self) -> int:
        return self.size


@message
class Place:
    """Room the driver set aside in its arena for a value a worker is about to write."""

    segment: str
    offset: int
    size: int


Value = Union[InlineValue, SharedValue]


# --- driver -> worker ------------------------------------------------------------------------

@message
class TaskSpec:
    """One unit of work: which function, with which arguments, producing which objects."""

    task_id: str
    name: str
    kind: TaskKind
    function_hash: str
    args: Value  # pickled (args, kwargs); top-level ObjectRefs stay refs, see ``resolved``
    top_level_refs: tuple[str, ...]  # ids of refs that are positional or keyword arguments
    return_ids: tuple[str, ...]
    max_retries: int = 0
    # The actor a method call goes to, or the one a creation makes ("" for a plain task).
    actor_id: str = ""
    method: str = ""  # an actor method call: the method (also ``name``'s last part)
    pin_worker: int = 0  # run only on this worker (``%%remote --all``); 0: anywhere
    # What it needs while it runs, by name ("CPU", "GPU", custom); () means one CPU.
    resources: tuple[tuple[str, float], ...] = ()
    # Retry when the task raises: False, True (any exception), or the pickled tuple of
    # exception classes to retry on (checked in the driver, which has the classes).
    retry_exceptions: bool | bytes = False


@message
class RunTask:
    """Run ``spec`` now; ``seq`` identifies this run (cancel slot, retries)."""

    seq: int
    spec: TaskSpec
    resolved: tuple[tuple[str, Value], ...]  # values of the top-level ref arguments
    function: bytes | None = None  # the pickled function, when this worker lacks it
    poll_after: bool = True  # poll for the next message a moment before sleeping
    gpu_ids: tuple[int, ...] = ()  # GPU devices the run may use (CUDA_VISIBLE_DEVICES)
    actor: ActorOptions | None = None  # with an actor's creation: how its calls run


@message
class Reply:
    """Answer to a worker's request that has a ``request_id``; ``error`` for any of them."""

    request_id: int
    values: tuple[tuple[str, Value], ...] = ()  # GetRequest
    ready: tuple[str, ...] = ()  # WaitRequest: the ids that are ready
    error: bytes | None = None  # a pickled exception to raise in the worker
    place: Place | None = None  # AllocateRequest
    # CreateActorRequest, GetActorRequest: the actor ("" : no actor of that name)
    actor_id: str = ""
    actor: ActorOptions | None = None  # GetActorRequest: the named actor's options


@message
class RunBatch:
    """Run several plain tasks of one function, one after the other: a loop of short
    submissions travels as one message each way (see ``backends.local.batches``).

    Member ``i`` runs as run ``seq + i`` (cancel marks and revokes address it alone);
    it is ``template`` with its own task id, arguments and return ids.
    """

    seq: int
    template: TaskSpec
    members: tuple[tuple[str, Value, tuple[str, ...]], ...]  # (task_id, args, return_ids)
    function: bytes | None = None
    poll_after: bool = True


@message
class SetSerializers:
    """The driver's serializer registry, pickled, replacing the worker's."""

    registry: bytes


@message
class Stop:
    """Finish the current task, then exit cleanly."""


# --- worker -> driver -------------------------------------------------------------------------

@message
class TaskDone:
    """A run finished: its results (or one error value) and when it ran."""

    seq: int
    task_id: str
    results: tuple[Value, ...]
    started: float
    finished: float
    failed: bool = False
    cancelled: bool = False
    actor_exited: bool = False  # the call ended its actor (exit_actor())


#: One member's end in a BatchDone: (index in the batch, results or one error value,
#: started, finished, failed, cancelled).
MemberDone = tuple[int, tuple[Value, ...], float, float, bool, bool]


@message
class BatchDone:
    """Members of the batch sent as run ``seq`` that finished; ``last``: the batch is over."""

    seq: int
    members: tuple[MemberDone, ...]
    last: bool


@message
class Output:
    """Text a task printed, to show in the driver."""

    task_id: str
    stream: OutputStream
    text: str


class Request:
    """What a task asks of the driver (``get``, ``put``, ``.remote`` ... called in a worker).

    One class per kind, each with only its fields, so the driver dispatches on the type.
    Those with a ``request_id`` are answered with a ``Reply`` the worker waits for; the
    others are fire-and-forget, so a task can fan out without a round trip.
    """

    __slots__ = ()  # keeps the subclasses' instances free of a __dict__


@message
class GetRequest(Request):
    """``get()``: answered with the values once all are in, or with the first error in.

    A timeout is the worker's own: it stops waiting for the reply.
    """

    request_id: int
    object_ids: tuple[str, ...]


@message
class WaitRequest(Request):
    """``wait()``: answered with the ready ids once ``num_returns`` are, or at once when
    ``timeout`` is 0 (the worker asks so after waiting ``timeout`` itself)."""

    request_id: int
    object_ids: tuple[str, ...]
    num_returns: int
    timeout: float | None


@message
class PutRequest(Request):
    """``put()``: store ``value`` as ``object_id`` (an id the worker made)."""

    request_id: int
    object_id: str
    value: Value


@message
class SubmitRequest(Request):
    """``.remote()`` of a function or an actor method; fire-and-forget (the ids are in
    ``spec``)."""

    spec: TaskSpec
    function: bytes | None = None  # pickled, the first time this worker submits it


@message
class CreateActorRequest(Request):
    """``.remote()`` of an actor class. Fire-and-forget for an unnamed actor; for a named
    one the worker waits for the actor's id (its name may be taken, or name a live actor
    that ``get_if_exists`` returns instead)."""

    request_id: int  # 0 for an unnamed actor: there is no reply
    spec: TaskSpec
    function: bytes | None
    actor: ActorOptions

    @property
    def needs_reply(self) -> bool:
        return bool(self.actor.name)


@message
class KillActorRequest(Request):
    """``kill()``; fire-and-forget."""

    actor_id: str
    no_restart: bool


@message
class CancelRequest(Request):
    """``cancel()`` of the task that makes ``object_id``; fire-and-forget."""

    object_id: str
    force: bool


@message
class GetActorRequest(Request):
    """``get_actor()``: the live actor of that name (a reply without one: none)."""

    request_id: int
    name: str
    namespace: str | None  # None: the cluster's


@message
class AllocateRequest(Request):
    """Room in the driver's arena for a large value the worker is about to write."""

    request_id: int
    size: int  # bytes


@message
class ReleaseRequest(Request):
    """Room lent by an ``AllocateRequest`` that the worker did not use; fire-and-forget."""

    place: Place


@message
class RefDelta:
    """ObjectRefs that came alive or died in a worker since its last message."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = field(default=())
    views_opened: tuple[tuple[str, int], ...] = ()  # arena regions (segment, offset)
    views_closed: tuple[tuple[str, int], ...] = ()


@message
class ActorOptions:
    """How to start an actor (Ray's names), and what its handles need to know."""

    class_name: str
    methods: tuple[tuple[str, int], ...]  # (method name, num_returns)
    max_restarts: int = 0
    max_task_retries: int = 0
    name: str = ""
    detached: bool = False  # lives until shutdown or kill(), even with no handle left
    namespace: str = ""  # of its name ("" : the cluster's namespace)
    get_if_exists: bool = False  # a live actor of that name is returned instead
    # Held for the actor's whole life ("CPU", "GPU", custom); () holds nothing.
    resources: tuple[tuple[str, float], ...] = ()
    max_concurrency: int = 1  # calls run at once (threads; an async actor: its event loop)
    is_async: bool = False  # has async methods: calls run as coroutines on one event loop
    concurrency_groups: tuple[tuple[str, int], ...] = ()  # group name -> calls at once
    method_groups: tuple[tuple[str, str], ...] = ()  # method name -> its group


@message
class WorkerReady:
    """First message of a worker: it is up and listening."""


WorkerMessage = Union[TaskDone, BatchDone, Output, Request, RefDelta, WorkerReady]


# --- what a submission carries ---------------------------------------------------------------

@message
class FunctionPayload:
    """A function pickled once, named by the hash of its bytes."""

    function_hash: str
    data: bytes
    name: str


@message
class TaskOptions:
    """Per-call options of a remote function (Ray's names)."""

    num_returns: int = 1
    max_retries: int = 3
    num_cpus: float = 1
    name: str = ""
    kind: FunctionTaskKind = "task"
    pin_worker: int = 0
    num_gpus: float = 0
    resources: tuple[tuple[str, float], ...] = ()  # custom resources by name
    retry_exceptions: bool | bytes = False  # see TaskSpec
    concurrency_group: str = ""  # an actor method call: the group it runs in
    # None, "DEFAULT", "SPREAD" or one of Ray's strategy objects (only Ray honours those)
    scheduling_strategy: Any = None
