"""The Ray engine: our API mapped onto Ray's own mechanisms (SPEC §7).

Each of our ObjectRefs stands for a Ray ObjectRef (or, for an actor, its handle) kept
here while any of ours is alive: ``ObjectRef.counted`` reports births and deaths to
this engine's table, as it does to the local engine's store. Remote functions and
actor classes arrive pickled once (``FunctionPayload``); each is loaded here once,
wrapped (``runner.traced``: every call also returns its report, with its times, node and
output) and handed to ``ray.remote``, which ships it to Ray's workers by value. The
reports come back on a channel of the driver's (``report_channel``; as one more return
value where workers cannot reach it) and fill the task records (``records.TaskBook``)
that the inline timings, the panel and an interrupted cell use. Ray's errors are raised
as ours (``errors.translated``).

A process connected to Ray already (its own ``ray.init``, or a Ray worker) keeps its
connection: ``shutdown()`` then ends this engine's tasks and actors, as Ray does for a
driver that leaves, and stays connected.

Tasks submitted inside a task are recorded in that worker; those that ended by the time
their parent did travel in its report, and the driver files them, with their output,
under the parent's cell.

Beside it: how it reaches Ray (``connection``), our options in Ray's names
(``ray_options``), and what ``%dist status`` and the panel show of the cluster
(``cluster_view``).
"""

from __future__ import annotations

import dataclasses
import pickle
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ray

from distkernel.backends.base import CellSource, Engine, OutputHandler
from distkernel.backends.ray import (
    cluster_view,
    connection,
    handover,
    runner,
    task_output,
    traced_actor,
)
from distkernel.backends.ray.errors import translated
from distkernel.backends.ray.ray_options import actor_options, task_options
from distkernel.backends.ray.records import TaskBook
from distkernel.backends.ray.report_channel import ChannelAddress
from distkernel.backends.ray.report_listener import ReportListener
from distkernel.backends.snapshot import (
    ClusterSnapshot,
    Counters,
    StoreSnapshot,
)
from distkernel.core import config, context, refs
from distkernel.core.bounded import BoundedDict
from distkernel.core.exceptions import (
    ActorDiedError,
    DistkernelError,
    SerializationError,
    actor_gone,
)
from distkernel.core.protocol import ActorOptions, FunctionPayload, TaskOptions
from distkernel.core.refs import ObjectRef
from distkernel.core.timings import TaskRecord
from distkernel.engine import specs
from distkernel.store.pickler import registry
from distkernel.store.serialization import serialize

#: How many (function, options) combinations keep their Ray remote function.
OPTIONED_KEPT = 256
#: How long kill(no_restart=True) waits for the actor to stop answering (seconds).
KILL_WAIT = 10.0
#: The options Ray calls an actor's methods with by default (``runner.traced`` gives
#: them no marks of Ray's own).
_RAY_METHOD_DEFAULTS = {"num_returns": 1}


@dataclasses.dataclass
class _Actor:
    """What calls to one actor need: its class's name, which methods report (``runner``)
    and whether they return their report (else they send it on its maker's channel),
    Ray's method handles made with options, and the serializer registry it was given."""

    class_name: str
    traced: frozenset[str]
    returns_report: bool | None = True  # None: not known yet (ask the actor)
    made_here: bool = False  # by this engine's create_actor, not found by name
    detached: bool = False
    methods: dict[tuple[str, int, str], Any] = dataclasses.field(default_factory=dict)
    registry: bytes | None = None


#: This process's Ray engine: the driver's, or the one inside a task (``in_task``).
_this_process: RayEngine | None = None


class RayEngine(Engine):
    name = "ray"

    def __init__(self, settings: config.ClusterSettings, address: str, *,
                 in_task: bool = False) -> None:
        self._ray = ray
        self.settings = settings
        self.cluster_id = secrets.token_hex(8)
        self.closing = False
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._held: dict[str, Any] = {}  # our id -> Ray ObjectRef or actor handle
        self._counts: Counter[str] = Counter()  # our id -> our refs alive
        self._functions: dict[tuple[Any, ...], Any] = {}  # (hash, num_returns, ...) -> traced
        # (class hash, concurrency groups, where reports go) -> Ray actor class, traced methods
        self._classes: dict[tuple[Any, ...], Any] = {}
        self._actors: dict[str, _Actor] = {}  # our id of an actor -> what calls to it need
        # Ray's remote functions made with options, kept (see _function_with).
        self._optioned: BoundedDict[tuple[Any, ...], Any] = BoundedDict(OPTIONED_KEPT)
        self._last_optioned: tuple[Any, ...] = (None, None, None, None, None)
        self._exited: dict[str, str] = {}  # Ray's id of an actor that ended itself -> why
        self._registry_version = -1  # of our serializer registry, as last given to Ray
        self._registered: list[type] = []
        self._registry_data: bytes | None = None
        # A task's worker is connected already, and so is a process whose own code called
        # ray.init: that connection is used, and left open by shutdown().
        self._borrowed = in_task or ray.is_initialized()
        if not self._borrowed:
            connection.connect(address, settings)
        elif not in_task:
            connection.check_connected_to(address)
        # Reports come on a channel of the driver's, where its workers can reach it.
        self._channel = None if in_task or connection.through_ray_client() else ReportListener(
            "127.0.0.1" if address == connection.LOCAL_RAY and not self._borrowed
            else ray.util.get_node_ip_address())
        self._channel_address = self._channel.address if self._channel is not None else None
        # Through Ray Client, where the running children of a call that raised are kept.
        self._keeper = handover.start_keeper() \
            if not in_task and connection.through_ray_client() else None
        self._in_task = in_task
        self._book = TaskBook(settings.log_to_driver, in_task=in_task, channel=self._channel)
        self._book.on_actor_exit = self._actor_exited
        self.store_address = address
        refs.set_tracker(self)
        # Our refs travel inside values as the Ray refs they stand for (Ray then tracks who
        # borrows them), and come back as ours in whichever process unpickles them.
        ray.util.register_serializer(ObjectRef, serializer=self._ref_out,
                                     deserializer=_ref_in)
        global _this_process
        _this_process = self

    # -- our refs and Ray's ----------------------------------------------------------------

    def add(self, object_id: str) -> None:
        with self._lock:
            self._counts[object_id] += 1

    def remove(self, object_id: str) -> None:
        """The last of our refs to an object gone: Ray may free it (an actor: end it)."""
        with self._lock:
            self._counts[object_id] -= 1
            if self._counts[object_id] <= 0:
                del self._counts[object_id]
                self._held.pop(object_id, None)
                self._actors.pop(object_id, None)

    def _ref_out(self, ref: ObjectRef) -> Any:
        return self._theirs(ref)

    def _ours(self, held: Any, object_id: str = "") -> ObjectRef:
        object_id = object_id or refs.new_id()
        with self._lock:
            self._held[object_id] = held
            self._counts[object_id] = 1  # the ref returned
        return ObjectRef.counted(object_id, self.cluster_id)

    def _theirs(self, ref: ObjectRef) -> Any:
        if not isinstance(ref, ObjectRef):
            msg = (f"expected an ObjectRef (what .remote() and put() return), got "
                   f"{type(ref).__name__}")
            raise TypeError(msg)
        return self._held_as(ref.hex() if ref.cluster_id == self.cluster_id else "", ref)

    def _held_as(self, object_id: str, what: object) -> Any:
        """What Ray holds for our id; ``what`` names it in the error (formatted only then:
        this runs for every call). One dict lookup needs no lock."""
        held = self._held.get(object_id)
        if held is None:
            msg = (f"{what} belongs to a cluster that was shut down or restarted: run the "
                   f"cells that create it again")
            raise DistkernelError(msg)
        return held

    def _arguments(self, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Top-level refs become Ray's, which Ray resolves before the task runs."""
        def swap(value: Any) -> Any:
            return self._theirs(value) if type(value) is ObjectRef else value

        return [swap(a) for a in args], {k: swap(v) for k, v in kwargs.items()}

    # -- objects ---------------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        self._sync_registry()
        try:
            return self._ours(self._call(self._ray.put, value))
        except TypeError as exc:
            raise _why_not_serializable(exc, lambda: serialize(value)) from None

    def get(self, object_refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        theirs = [self._theirs(ref) for ref in object_refs]
        return list(self._call(self._ray.get, theirs, timeout=timeout))

    def wait(self, object_refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        theirs = [self._theirs(ref) for ref in object_refs]
        ready, _ = self._call(self._ray.wait, theirs, num_returns=min(num_returns, len(theirs)),
                              timeout=timeout)
        ready_ids = {id(r) for r in ready}
        done = [ours for ours, ray_ref in zip(object_refs, theirs) if id(ray_ref) in ready_ids]
        rest = [ours for ours, ray_ref in zip(object_refs, theirs)
                if id(ray_ref) not in ready_ids]
        return done, rest

    def _call(self, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except Exception as exc:
            ours = translated(exc)
            reason = self._exited.get(getattr(exc, "actor_id", None) or "") \
                if self._exited and isinstance(ours, ActorDiedError) else None
            if reason is not None:  # as the local engine says it
                ours = actor_gone("the call", reason)
            if ours is exc:
                raise
            try:
                raise ours from ours.__cause__  # a TaskError's: its remote traceback
            finally:  # (held by this frame, which its traceback holds, the error would
                del ours  # keep the frame and the refs it was given until a collection)

    def _actor_exited(self, ray_actor_id: str, reason: str) -> None:
        """A call of this actor's ended it with exit_actor(), and its result is stored: end
        the actor for good (no restart), as the local engine does."""
        with self._lock:
            self._exited[ray_actor_id] = reason
            handle = next((held for held in self._held.values()
                           if _ray_actor_id(held) == ray_actor_id), None)
        if handle is not None:
            self._ray.kill(handle, no_restart=True)

    # -- tasks and actors ------------------------------------------------------------------

    def submit(self, function: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: TaskOptions, *, actor_id: str = "",
               method: str = "") -> list[ObjectRef]:
        call_args, call_kwargs = self._arguments(args, kwargs)
        registry_data = self._sync_registry()
        count = options.num_returns
        if actor_id:
            handle = self._held_as(actor_id, f"the actor {actor_id}")
            actor = self._actor_of(actor_id, handle)
            name, kind = f"{actor.class_name}.{method}", "actor_method"
            reports = method in actor.traced
            returns_report = bool(actor.returns_report)
            remote = actor.methods.get((method, count, options.concurrency_group))
            if remote is None:
                remote = self._actor_method(actor, handle, method, count,
                                            options.concurrency_group)
        else:
            name, kind, reports = options.name or function.name, options.kind, True
            returns_report = self._reports_to() is None
            remote = self._function_with(function, options, registry_data is not None)
            actor = None
        if reports and registry_data is not None:
            if actor is None:
                call_kwargs[runner.REGISTRY_KEYWORD] = registry_data
            elif actor.registry is not registry_data:
                self._call(getattr(handle, traced_actor.USE_REGISTRY).remote, registry_data)
                actor.registry = registry_data
        try:
            made = self._call(remote.remote, *call_args, **call_kwargs)
        except TypeError as exc:
            raise _why_not_serializable(exc, lambda: specs.serialize_arguments(
                args, kwargs, f"{name}.remote(...)")) from None
        made = list(made) if isinstance(made, list) else [made]
        report = made.pop() if reports and returns_report else None
        # A report on the driver's channel is known by Ray's id of the call.
        on_channel = reports and not returns_report
        ray_task_id = made[0].task_id().hex() if on_channel else ""
        task_id = self._book.submitted(name, kind, made[0], report,  # type: ignore[arg-type]
                                       ray_task_id)
        if on_channel and self._channel is None:  # inside a task: the driver files it
            runner.note_submitted(ray_task_id, name, kind)  # under this call's cell
        elif self._in_task:  # (a driver runs no call of ours: nothing to tell)
            task_output.submitted_here(task_id)  # its report will carry this one
        return [self._ours(ray_ref) for ray_ref in made]

    def _actor_of(self, actor_id: str, handle: Any) -> _Actor:
        """What calls to this actor need; for a handle that came inside a value, asked of
        the actor itself once."""
        actor = self._actors.get(actor_id)
        if actor is None:
            try:
                described = self._describe(handle)
            except ActorDiedError:  # the call fails as any call to it does
                described = None
            actor = self._actors[actor_id] = \
                _Actor(described[0].class_name, described[1], described[2]) \
                if described is not None else _Actor("actor", frozenset())
        if actor.returns_report is None:
            actor.returns_report = self._returns_report(handle)
        return actor

    def _actor_method(self, actor: _Actor, handle: Any, method: str, count: int,
                      group: str) -> Any:
        """Ray's handle of this method for ``count`` results in ``group``, made once (Ray's
        ``.options()`` costs tens of µs) and kept with the actor."""
        reports = method in actor.traced and bool(actor.returns_report)
        method_options: dict[str, Any] = {"num_returns": count + reports}
        if group:
            method_options["concurrency_group"] = group
        remote = getattr(handle, method)
        if method_options != _RAY_METHOD_DEFAULTS:  # (a call through options() costs
            remote = remote.options(**method_options)  # Ray more)
        actor.methods[(method, count, group)] = remote
        return remote

    def _reports_to(self) -> ChannelAddress | None:
        """Where the reports of calls made here go: this driver's channel; inside a task,
        its driver's (None: they are returned)."""
        if self._channel_address is not None or not self._in_task:
            return self._channel_address
        return runner.driver_channel()

    def _sync_registry(self) -> bytes | None:
        """Our serializer registry, made Ray's in this driver (for what it sends) when it
        changed; its pickled form, which traced calls take along for what workers send
        (None while it is empty)."""
        version = registry.version
        if version == self._registry_version:
            return self._registry_data
        from ray import util

        entries = registry.items()
        for cls in self._registered:
            util.deregister_serializer(cls)
        for cls, (serializer, deserializer) in entries:
            util.register_serializer(cls, serializer=serializer, deserializer=deserializer)
        # Pickled by Ray's own cloudpickle: a notebook class in it is then the very class
        # the worker rebuilds from the task's function (one tracker of classes by id). Once
        # there was one, even an empty registry goes along: workers must forget classes.
        if entries or self._registered or self._registry_data is not None:
            self._registry_data = self._ray.cloudpickle.dumps(entries)
        self._registered = [cls for cls, _ in entries]
        self._registry_version = version
        return self._registry_data

    def _on_node(self, index: int) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_id = self._book.node_id(index)
        if node_id is None:
            msg = f"there is no node {index} in this Ray cluster (see %dist status)"
            raise DistkernelError(msg)
        return NodeAffinitySchedulingStrategy(node_id, soft=False)

    def _function_with(self, function: FunctionPayload, options: TaskOptions,
                       with_registry: bool) -> Any:
        """Ray's remote function for these options (``with_registry``: taking our
        serializer registry along), kept for the last OPTIONED_KEPT combinations (options
        made per call, say a name each, must not pile up). A loop submitting one function
        finds it in ``_last_optioned`` at once."""
        reports_to = self._reports_to()
        last = self._last_optioned  # (compared by identity: nothing made per call)
        if last[0] is function and last[1] is options and last[2] is reports_to and \
                last[3] is with_registry:
            return last[4]
        key = (function.function_hash, options, reports_to, with_registry)
        try:
            hash(key)
        except TypeError:  # a scheduling strategy that cannot be hashed: made each time
            return self._remote_function(function, options, with_registry)
        remote = self._optioned.get(key)
        if remote is None:
            remote = self._optioned[key] = self._remote_function(function, options,
                                                                 with_registry)
        else:
            self._optioned.move_to_end(key)
        self._last_optioned = (function, options, reports_to, with_registry, remote)
        return remote

    def _remote_function(self, function: FunctionPayload, options: TaskOptions,
                         with_registry: bool) -> Any:
        """Ray's remote function for ``function`` with these options, made with them: a
        ``.options(...)`` copy checks its options again at every call (about 80 µs)."""
        count, reports_to = options.num_returns, self._reports_to()
        key = (function.function_hash, count, reports_to, bool(options.retry_exceptions),
               with_registry)
        traced = self._functions.get(key)
        if traced is None:
            traced = self._functions[key] = runner.traced(
                pickle.loads(function.data), count, attach_in_task, reports_to,
                bool(options.retry_exceptions) and options.max_retries != 0,
                takes_registry=with_registry)
        ray_options = task_options(options, function.name)
        ray_options["num_returns"] = count + (reports_to is None)  # the report returned
        if options.pin_worker:  # %%remote --all: one copy per node
            ray_options["scheduling_strategy"] = self._on_node(options.pin_worker)
        return self._ray.remote(**ray_options)(traced)

    def create_actor(self, cls: FunctionPayload, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ObjectRef:
        reports_to = self._reports_to()
        key = (cls.function_hash, options.concurrency_groups, reports_to)
        actor_class = self._classes.get(key)
        if actor_class is None:
            traced = traced_actor.traced_class(pickle.loads(cls.data), options.methods, options,
                                         attach_in_task, reports_to)
            groups = dict(options.concurrency_groups)  # Ray takes them here, not in options()
            made = (self._ray.remote(concurrency_groups=groups)(traced)  # type: ignore[call-overload]
                    if groups else self._ray.remote(traced))
            actor_class = self._classes[key] = (made, getattr(traced, traced_actor.TRACED))
        call_args, call_kwargs = self._arguments(args, kwargs)
        # what it calls itself
        actor_id = call_kwargs[traced_actor.ACTOR_ID_KEYWORD] = refs.new_id()
        self._sync_registry()
        try:
            handle = self._call(actor_class[0].options(**actor_options(options)).remote,
                                *call_args, **call_kwargs)
        except TypeError as exc:
            raise _why_not_serializable(exc, lambda: specs.serialize_arguments(
                args, kwargs, f"{options.class_name}.remote(...)")) from None
        except DistkernelError as exc:
            if options.name and "is already taken" in str(exc):  # as the local engine says
                msg = (f"an actor named {options.name!r} already exists; pick another name, "
                       f"use get_if_exists=True, or get it with get_actor({options.name!r})")
                raise ValueError(msg) from None
            raise
        returns_report: bool | None = reports_to is None
        if options.get_if_exists:
            known = self._known_actor(handle)
            if known is not None:
                return known
            returns_report = None  # maybe another process's actor: asked at the first call
        ours = self._ours(handle, actor_id)
        self._actors[ours.hex()] = _Actor(options.class_name, actor_class[1], returns_report,
                                          made_here=True, detached=options.detached)
        # Its record ends when the actor is ready (its constructor ran, or failed).
        task_id = self._book.submitted(options.class_name, "actor_create",
                                       handle.__ray_ready__.remote(), None)
        if self._in_task:
            task_output.submitted_here(task_id)
        return ours

    def named_actor(self, name: str,
                    namespace: str | None = None) -> tuple[ObjectRef, ActorOptions] | None:
        """Ray's named actor (any driver's), with the options it was made with, which the
        actor itself keeps (``traced_actor.DESCRIBE``); None if there is none of that name."""
        try:
            handle = self._ray.get_actor(  # by default the namespace this process is in
                name, namespace=namespace or self._ray.get_runtime_context().namespace)
        except ValueError:  # Ray's answer for "no such actor"
            return None
        described = self._describe(handle)
        if described is None:
            msg = (f"the actor {name!r} was not made through distkernel: use ray.get_actor "
                   f"for it")
            raise DistkernelError(msg)
        options, traced, returns_report = described
        known = self._known_actor(handle)
        if known is not None:
            return known, options
        ours = self._ours(handle)
        self._actors[ours.hex()] = _Actor(options.class_name, traced, returns_report)
        return ours, options

    def _known_actor(self, handle: Any) -> ObjectRef | None:
        """A new ref to an actor this driver holds already (found by name, or made with
        get_if_exists): the same handle, as on the local engine; None if it is new here."""
        with self._lock:
            known = next((actor_id for actor_id in self._actors
                          if getattr(self._held.get(actor_id), "_actor_id", None)
                          == handle._actor_id), None)
            if known is None:
                return None
            self._counts[known] += 1
        return ObjectRef.counted(known, self.cluster_id)

    def _returns_report(self, handle: Any) -> bool:
        """Whether the calls of an actor made with ``get_if_exists`` (this engine's or
        another process's) return their report, as the actor says."""
        try:
            described = self._describe(handle)
        except ActorDiedError:  # its calls fail as any call to it does
            described = None
        return described[2] if described is not None else self._reports_to() is None

    def _describe(self, handle: Any) -> tuple[ActorOptions, frozenset[str], bool] | None:
        """An actor's options, traced methods and whether they return their report, as it
        keeps them; None for an actor not made through distkernel."""
        try:
            describe = getattr(handle, traced_actor.DESCRIBE)
        except AttributeError:
            return None
        return self._call(self._ray.get, describe.remote(), timeout=60)  # type: ignore[no-any-return]

    def kill_actor(self, actor_id: str, no_restart: bool) -> None:
        """Stop the actor now, as on the local engine: Ray's kill only asks for it, and a
        call made right after could still run; with ``no_restart`` this waits (up to
        KILL_WAIT seconds) until the actor answers no more."""
        handle = self._held_as(actor_id, f"the actor {actor_id}")
        self._call(self._ray.kill, handle, no_restart=no_restart)
        if not no_restart:
            return  # it may restart: there is no "dead" to wait for
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            try:
                self._ray.get(handle.__ray_ready__.remote(), timeout=KILL_WAIT)
            except Exception as exc:  # noqa: BLE001 - any failure: it no longer answers
                # Ray's error and the frames of its traceback hold each other, and ours
                # among them the handle: only a garbage collection would let it go.
                exc.__traceback__ = None
                return
            time.sleep(0.01)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        results = self._theirs(ref)
        self._book.cancelling([results])
        self._call(self._ray.cancel, results, force=force)

    def cancel_task(self, task_id: str, *, force: bool = False) -> bool:
        results = self._book.unfinished(task_id)
        if results is None:  # submitted inside a task: the worker that did cancels it
            return bool(self._book.cancel_nested(task_id=task_id, force=force))
        self._book.cancelling([results])
        self._call(self._ray.cancel, results, force=force)
        return True

    # -- where a task runs (the API inside a task: core.context.WorkerContext) ----------------

    @property
    def actor_id(self) -> str:
        """Inside an actor, its id as its handles have it (Ray's for an actor not made
        through distkernel)."""
        return traced_actor.this_actor["id"] or self._ray.get_runtime_context().get_actor_id() or ""

    def task_id(self) -> str:
        return self._ray.get_runtime_context().get_task_id() or ""

    def job_id(self) -> str:
        """Ray's job id: the same in the driver and in its tasks, on every node."""
        return str(self._ray.get_runtime_context().get_job_id())

    def node_id(self) -> str:
        """Ray's id of the node this process runs on."""
        return str(self._ray.get_runtime_context().get_node_id())

    def gpu_ids(self) -> list[str]:
        return [str(gpu) for gpu in self._ray.get_gpu_ids()]

    # -- the cluster ---------------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 0))

    def resize(self, num_workers: int) -> None:
        msg = ("a Ray cluster's size is Ray's: add or remove nodes (ray start / ray stop, or "
               "the autoscaler); %dist scale works on the local engine")
        raise DistkernelError(msg)

    def shutdown(self) -> None:
        if self.closing:
            return
        self.closing = True
        ending = (self._book.close(), self._own_actors())
        with self._lock:
            self._held.clear()
            self._counts.clear()
        refs.set_tracker(None)
        global _this_process
        _this_process = None
        # At interpreter exit Ray may have shut itself down first: any call of its would
        # then start a new Ray.
        if not self._ray.is_initialized():
            return
        self._ray.util.deregister_serializer(ObjectRef)
        if self._borrowed:
            self._end_own_work(ending)
        else:
            self._ray.shutdown()

    def _end_own_work(self, ending: tuple[list[Any], list[Any]]) -> None:
        """What a disconnecting driver's work gets from Ray, on a connection that stays
        open: its unfinished tasks are stopped and its actors (not detached ones) killed."""
        unfinished, actors = ending
        for results in unfinished:
            try:
                self._ray.cancel(results, force=True, recursive=True)
            except Exception:  # noqa: BLE001 - an actor's call (ends with its actor), or done
                pass
        for handle in actors:
            try:
                self._ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - gone already
                pass

    def _own_actors(self) -> list[Any]:
        """Handles of the actors this engine made that end with it (not detached ones)."""
        with self._lock:
            made = [self._held[actor_id] for actor_id, actor in self._actors.items()
                    if actor.made_here and not actor.detached and actor_id in self._held]
        return made if self._keeper is None else [*made, self._keeper]

    def snapshot(self) -> ClusterSnapshot:
        nodes = cluster_view.nodes(self._book.node_index)
        total = self._ray.cluster_resources()
        available = self._ray.available_resources()
        store_total = int(total.get("object_store_memory", 0))
        store_free = int(available.get("object_store_memory", store_total))
        with self._lock:
            held_count = len(self._held)
            actors = [(actor_id, actor.class_name, self._held[actor_id])
                      for actor_id, actor in self._actors.items() if actor_id in self._held]
        counts = self._book.counts
        return ClusterSnapshot(
            self.name, self.cluster_id, self.started_at, time.time(), self.num_workers,
            cluster_view.node_workers(nodes),
            cluster_view.actor_rows(actors, self._book.node_index),
            StoreSnapshot(store_total, store_total - store_free, held_count, 0, 0), 0,
            self._book.running_count(), tuple(sorted(total.items())),
            tuple(sorted(available.items())),
            Counters(counts["submitted"], counts["finished"], counts["failed"],
                     counts["cancelled"]), nodes)

    def timeline(self, last: int | None = None, *, cell: str | None = None) -> list[TaskRecord]:
        """As on the local engine, a task whose result a ``get`` returned is finished here."""
        self._call(self._book.catch_up)
        return self._book.timeline(last, cell)

    # -- the notebook cell behind each task ----------------------------------------------------

    def route_output(self, current_cell: CellSource | None, write: OutputHandler) -> None:
        """What a traced task printed goes to ``write`` when its report is in; output
        nothing traced (an actor's constructor) Ray prints itself (``log_to_driver``)."""
        self._book.route_output(current_cell, write)

    def cell_of_task(self, task_id: str) -> str | None:
        return self._book.cell_of(task_id)

    def cancel_cell(self, cell: str, *, force: bool = False) -> list[str]:
        unfinished = self._book.unfinished_of_cell(cell)
        self._book.cancelling([results for _, results in unfinished])
        for _, results in unfinished:
            try:
                self._ray.cancel(results, force=force)
            except Exception:  # noqa: BLE001 - it ended meanwhile: nothing to cancel
                pass
        # Those submitted inside its tasks, also once these ended: by the workers that did
        nested = self._book.cancel_nested(cell=cell, force=force)
        return [task_id for task_id, _ in unfinished] + nested


def _ref_in(theirs: Any) -> ObjectRef:
    """One of our refs arriving inside a value, as the Ray ref it stood for: ours again,
    in this process's engine (a task's, made here if this is a Ray worker)."""
    engine = _this_process or attach_in_task()
    return engine._ours(theirs)


def attach_in_task() -> RayEngine:
    """In a Ray worker, before a task of ours runs: our API calls there go to Ray directly
    (``get`` / ``put`` / ``.remote`` inside a task, and refs inside its arguments)."""
    engine = _this_process
    if engine is None:
        import ray

        settings = config.ClusterSettings(0, 0, namespace=ray.get_runtime_context().namespace)
        engine = RayEngine(settings, "", in_task=True)
        context.set_worker(engine)  # type: ignore[arg-type]
        runner.take_nested = engine._book.take_nested
    return engine


def _ray_actor_id(held: Any) -> str:
    """Ray's id (hex) of a held actor handle; "" for anything else."""
    actor_id = getattr(held, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else ""


def _why_not_serializable(error: TypeError, ours: Callable[[], object]) -> BaseException:
    """Ray could not pickle a value: our pickler's SerializationError, which names the
    member that cannot travel and the fixes (``ours`` raises it), else Ray's error."""
    try:
        ours()
    except SerializationError as named:
        return named
    except Exception:  # noqa: BLE001 - ours fails otherwise: Ray's message stands
        return error
    return error
