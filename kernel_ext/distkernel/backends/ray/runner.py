"""What runs inside a Ray worker around each of our tasks: the call, its output, its times.

Each call makes a ``Report``: when it started and ended, on which node and process, and
what it printed. The driver files that in the task's record and writes the output under
the cell that submitted it, however late it comes (Ray would print it under whichever
cell runs then). A call sends its report on the driver's channel (``report_channel``)
before it returns or raises, also one submitted inside a task; without a channel (a
driver connected through Ray Client) it returns the report as one more value instead,
or, when it raises, carries it on the exception (and hands the records of the tasks it
submitted that still run to a keeper: ``handover``).

Ray's workers import this module (so distkernel must be installed where they run, as
any package a task uses); it needs only the standard library and Ray.
"""

from __future__ import annotations

import _signal
import contextvars
import functools
import inspect
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from distkernel.backends.ray import handover, report_channel
from distkernel.backends.ray.report_channel import ChannelAddress
from distkernel.backends.ray.sizes import size_of
from distkernel.backends.ray.task_output import call_buffers, capture_streams
from distkernel.core.exceptions import (
    ActorExit,
    actor_exit_reason,
    actor_gone,
    returned_values,
)
from distkernel.store.serialization import plain_data

#: The attribute a raised exception carries its task's report in.
REPORT_ATTRIBUTE = "_distkernel_report"
#: The keyword a task carries the driver's serializer registry in (its pickled form),
#: once there is one: the worker registers it with Ray before the call, for what it sends.
REGISTRY_KEYWORD = "_distkernel_registry"


class Report(NamedTuple):
    started: float  # epoch seconds, on the worker's clock
    finished: float
    node_id: str  # Ray's node id (hex)
    pid: int
    stdout: str
    stderr: str
    bytes_in: int = 0  # an estimate (``size_of``) of the arguments
    bytes_out: int = 0  # and of the results
    # The tasks it submitted that had ended by the time it did (``records.NestedRecord``s,
    # theirs included): the driver files them under the cell of this one.
    nested: tuple[Any, ...] = ()
    # An actor method that called exit_actor(): (Ray's id of the actor, why it ended). The
    # driver then ends the actor, for good, once this call's result is stored.
    actor_exit: tuple[str, ...] = ()
    # A call that raised: the exception, as a record shows it, and whether Ray runs the
    # call again (False: the error is its result).
    error: str = ""
    runs_again: bool = False
    # It raised KeyboardInterrupt: how Ray cancels a running call (and runs it no more).
    cancelled: bool = False
    # It raised, through Ray Client, with tasks it submitted still running: the key their
    # records were handed over under (to the job's keeper, ``handover``).
    handed_over: str = ""


#: In a worker, what becomes of a call's children (the ids in "children") once it ends:
#: the records of those that ended, taken from this worker's engine (set when it starts),
#: and, when the report travels as a result, those still running, handed over.
take_nested: Callable[[list[str], bool], tuple[Any, ...]] | None = None


def _accept_interrupts() -> None:
    """Ray cancels a running call by interrupting the main thread, which does nothing
    while SIGINT is ignored: a worker inherits that from a driver started in the
    background by a shell without job control (``nohup``, ``cmd &`` in a script), and an
    earlier call may have set it. Undone as each call starts (the local engine's workers
    undo it as each task ends)."""
    # signal.getsignal maps the answer to an enum (2 µs); the function it wraps does not.
    if _signal.getsignal(_SIGINT) == _IGNORED and \
            threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


_SIGINT, _IGNORED = int(signal.SIGINT), int(signal.SIG_IGN)


_this_node = {"id": ""}
#: This process's id, asked once (each ask is a system call) and again in a forked child.
_this_process = {"pid": os.getpid()}
os.register_at_fork(after_in_child=lambda: _this_process.update(pid=os.getpid()))


def _node_id() -> str:
    """Ray's id of this process's node (asked once: a process stays on its node)."""
    if not _this_node["id"]:
        try:
            import ray

            _this_node["id"] = str(ray.get_runtime_context().get_node_id())
        except Exception:  # noqa: BLE001 - outside Ray (a test calling the wrapper directly)
            return ""
    return _this_node["id"]


def traced(function: Callable[..., Any], num_returns: int,
           setup: Callable[[], object] | None = None,
           channel: ChannelAddress | None = None,
           retried_when_raising: bool = False, *,
           takes_registry: bool = False) -> Callable[..., Any]:
    """``function`` sending its ``Report`` on ``channel`` and returning its results; with
    no channel, returning its results and then its report (``num_returns + 1`` values in
    all), or raising with the report attached. A coroutine function stays one (an async
    actor's method). ``setup`` runs in the worker before each call (it makes our API
    usable there). ``retried_when_raising``: Ray runs the call again when it raises
    (``retry_exceptions``), as its report then says. ``takes_registry``: calls may pass
    our serializer registry (``REGISTRY_KEYWORD``); Ray checks every call against a
    signature, and one more parameter costs it about 3 µs a call, so only a function
    submitted while a registry is in use has it (an actor gets its registry by a call
    of its own).

    The wrapper refers to module functions only, which Ray's pickler sends by name: the
    state they keep (a lock, a context variable) stays in the worker's own module.
    """
    name = getattr(function, "__qualname__", "the task")
    keyword = REGISTRY_KEYWORD if takes_registry else ""
    if inspect.iscoroutinefunction(function):
        @standing_for(function)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if setup is not None:
                setup()
            call = _begin(args, kwargs, name, channel)
            try:
                value = await function(*args, **kwargs)
                if num_returns != 1:
                    value = returned_values(name, num_returns, value)
            except ActorExit:
                return _exited(call, num_returns, name, channel)
            except BaseException as exc:
                failed = _failed(exc, call, channel, retried_when_raising)
                if failed is exc:
                    del failed  # (see run)
                    raise
                try:
                    raise failed from exc
                finally:
                    del failed
            finally:
                _end(call)
            return _returned(value, call, num_returns, channel)

        return taking_keyword(run_async, function, keyword)

    @standing_for(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        if setup is not None:
            setup()
        call = _begin(args, kwargs, name, channel)
        try:
            value = function(*args, **kwargs)
            if num_returns != 1:  # (a wrong count fails the call, with its report)
                value = returned_values(name, num_returns, value)
        except ActorExit:
            return _exited(call, num_returns, name, channel)
        except BaseException as exc:
            failed = _failed(exc, call, channel, retried_when_raising)
            if failed is exc:  # (held by this frame, which its traceback holds, the error
                del failed  # would keep the call's arguments until a garbage collection)
                raise
            try:
                raise failed from exc
            finally:
                del failed
        finally:
            _end(call)
        return _returned(value, call, num_returns, channel)

    return taking_keyword(run, function, keyword)


def standing_for(function: Callable[..., Any]) -> Callable[[Any], Any]:
    """Give a wrapper ``function``'s name and doc, not its attributes and no way back to
    it (Ray reads the function it unwraps; the signature: ``taking_keyword``): a mark of
    Ray's on it (``ray.method(num_returns=...)``, in code moved from Ray) would change
    how Ray calls the wrapper behind our options."""
    def give(wrapper: Any) -> Any:
        functools.update_wrapper(wrapper, function, updated=())
        del wrapper.__wrapped__
        return wrapper

    return give


def taking_keyword(wrapper: Callable[..., Any], function: Callable[..., Any],
                    keyword: str = "") -> Callable[..., Any]:
    """``wrapper`` with ``function``'s signature, plus ``keyword`` if one is named: Ray
    checks a call's arguments against the signature it reads."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to check against: nothing to add
        return wrapper
    if not keyword:
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return wrapper
    params = list(signature.parameters.values())
    extra = inspect.Parameter(keyword, inspect.Parameter.KEYWORD_ONLY, default=None)
    at = len(params) - 1 if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD \
        else len(params)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], extra, *params[at:]])
    return wrapper


class _Call(NamedTuple):
    buffers: dict[str, list[str]]
    token: contextvars.Token[Any]
    started: float
    bytes_in: int


#: Why this process's actor ended (exit_actor() in one of its methods), once it has: its
#: later calls fail at once, as on the local engine, until the driver has ended it.
_ended_actor = {"reason": ""}


def _exited(call: _Call, num_returns: int, name: str, channel: ChannelAddress | None) -> Any:
    """The method called exit_actor(): it returns None (for each of its return values), and
    its report asks the driver to end the actor."""
    import ray

    reason = _ended_actor["reason"] = actor_exit_reason(name)
    value = None if num_returns == 1 else (None,) * num_returns
    actor_id = ray.get_runtime_context().get_actor_id() or ""
    return _returned(value, call, num_returns, channel, (actor_id, reason))


#: The channel of the driver this worker runs calls for, once one came with a call: where
#: the reports of the tasks submitted here go too.
_driver: dict[str, ChannelAddress | None] = {"channel": None}


def driver_channel() -> ChannelAddress | None:
    """The channel of this worker's driver (None outside a worker, or without one)."""
    return _driver["channel"]


def note_submitted(ray_task_id: str, name: str, kind: str) -> None:
    """Tell the driver that the running call submitted this task (whose report comes to
    the driver as well): the driver files it under the call's cell, also when it ends
    after the call."""
    channel = _driver["channel"]
    if channel is not None:
        parent = _running_task_id() or ""
        report_channel.send(channel, (ray_task_id, None, (parent, name, kind, time.time())))


#: What the second field of a message on the channel says when the task it names ended
#: in Ray without a report of its own (``note_ended``).
ENDED = "ended"


def note_ended(ray_task_id: str, cancelled: bool) -> None:
    """Tell the driver that a task the running process submitted (see ``note_submitted``)
    is done in Ray: one that sent no report of its own (its worker died, it was cancelled
    before it ran, an argument of it failed) ends there all the same. ``cancelled``: this
    process cancelled it."""
    channel = _driver["channel"]
    if channel is not None:
        report_channel.send(channel, (ray_task_id, ENDED, (cancelled,)))


#: What the driver writes back to ask a worker to cancel a task it submitted:
#: ``(CANCEL, Ray's task id, force)``.
CANCEL = "cancel"


def cancel_requests() -> list[Any]:
    """What the driver asked of this worker since the last look (``CANCEL`` requests)."""
    channel = _driver["channel"]
    return report_channel.requests(channel) if channel is not None else []


def _begin(args: tuple[Any, ...], kwargs: dict[str, Any], name: str,
           channel: ChannelAddress | None) -> _Call:
    if channel is not None:
        _driver["channel"] = channel
    if _ended_actor["reason"]:
        raise actor_gone(name, _ended_actor["reason"])
    registry = kwargs.pop(REGISTRY_KEYWORD, None)
    if registry is not None:
        use_registry(registry)
    capture_streams()
    _accept_interrupts()
    buffers: dict[str, list[str]] = {}
    return _Call(buffers, call_buffers.set(buffers), time.time(),
                 size_of(args) + size_of(kwargs))


_registered: dict[str, Any] = {"data": b"", "classes": []}


def use_registry(data: bytes) -> None:
    """Make Ray's serialization in this worker follow the driver's registry (the pickled
    ``(class, serializer, deserializer)`` list), if it changed since the last call."""
    if data == _registered["data"]:
        return
    import pickle

    from ray import util

    entries = pickle.loads(data)
    for cls in _registered["classes"]:
        util.deregister_serializer(cls)
    for cls, serializer, deserializer in ((c, s, d) for c, (s, d) in entries):
        util.register_serializer(cls, serializer=serializer, deserializer=deserializer)
    _registered.update(data=data, classes=[cls for cls, _ in entries])


def _end(call: _Call) -> None:
    call_buffers.reset(call.token)


class CarriedError(Exception):
    """An exception Ray's pickler cannot bring back (its constructor does not take its
    ``args``, a common pattern), carried as our pickler wrote it; the driver unpacks it
    (``errors.translated``), so that it is raised as the task raised it."""

    def __init__(self, data: bytes, text: str) -> None:
        super().__init__(data, text)
        self.data = data

    def __str__(self) -> str:
        return str(self.args[1])


def _failed(exc: BaseException, call: _Call, channel: ChannelAddress | None,
            runs_again: bool) -> BaseException:
    """The exception to raise for ``exc``; its report sent on ``channel``, or attached."""
    if channel is not None:
        from distkernel.core.exceptions import exception_text

        interrupted = isinstance(exc, KeyboardInterrupt)
        _send(channel, False, _report(call, False)._replace(
            error=exception_text(exc), runs_again=runs_again and not interrupted,
            cancelled=interrupted))
        return _travelling(exc)
    exc = _travelling(exc)
    report = _handing_over(_report(call, True))
    try:
        setattr(exc, REPORT_ATTRIBUTE, report)
    except Exception:  # noqa: BLE001 - an exception that takes no attributes
        pass
    return exc


def _handing_over(report: Report) -> Report:
    """A report to travel on an exception, which cannot hold Ray refs (the driver's Ray
    Client could not unpickle it): its records of children still running, which hold
    them, go to the job's keeper (``handover``), and it says where."""
    running = tuple(each for each in report.nested if each.refs is not None)
    if not running:
        return report
    ended = tuple(each for each in report.nested if each.refs is None)
    try:
        return report._replace(nested=ended, handed_over=handover.hand_over(running))
    except Exception:  # noqa: BLE001 - no keeper to be had: those children go unrecorded
        return report._replace(nested=ended)


def _send(channel: ChannelAddress, ok: bool, report: Report) -> None:
    """Send the running call's report to the driver: Ray's id of the call, whether it
    returned (else it raised, and Ray may run it again), the report as a plain tuple."""
    report_channel.send(channel, (_running_task_id(), ok, tuple(report)))


_runtime: dict[str, Any] = {"context": None}


def _running_task_id() -> str | None:
    """Ray's id of the call running here; Ray's context object is made once (making it
    costs more than asking it, and this runs for every call)."""
    context = _runtime["context"]
    if context is None:
        import ray

        context = _runtime["context"] = ray.get_runtime_context()
    return context.get_task_id()  # type: ignore[no-any-return]


def _travelling(exc: BaseException) -> BaseException:
    """``exc`` if Ray can pickle it and bring it back, else it as a ``CarriedError``.

    Pickled by Ray's own cloudpickle, which made the notebook's classes in this worker:
    the driver then gets its own exception class back, not a copy of it."""
    from ray import cloudpickle

    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: Ray's own handling
        return exc
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure: rebuilt from its state instead
        pass
    from distkernel.core.exceptions import exception_text
    from distkernel.store.serialization import rebuildable

    text = exception_text(exc)
    for carried in (rebuildable(exc), RuntimeError(f"{type(exc).__module__}.{text}")):
        try:
            data = cloudpickle.dumps(carried)
            cloudpickle.loads(data)
            return CarriedError(data, text)
        except Exception:  # noqa: BLE001 - the next, sturdier way
            continue
    return RuntimeError(text)


def _returned(value: Any, call: _Call, num_returns: int, channel: ChannelAddress | None,
              actor_exit: tuple[str, ...] = ()) -> Any:
    """What the call returns to Ray; ``value`` holds ``num_returns`` values unless that is
    one (``returned_values``)."""
    if num_returns == 1:
        checked: Any = _checked(value, channel)
    else:
        checked = tuple(_checked(each, channel) for each in value)
    bytes_out = size_of(value)
    if channel is not None and not call.buffers and not actor_exit:
        # (printed nothing, submitted nothing: the short report, packed not pickled)
        report_channel.send_short(channel, _running_task_id() or "", call.started,
                                  time.time(), _node_id(), _this_process["pid"],
                                  call.bytes_in, bytes_out)
        return checked
    report = _report(call, channel is None, bytes_out, actor_exit)
    if channel is not None:
        _send(channel, True, report)
        return checked
    return (checked, report) if num_returns == 1 else (*checked, report)


def _checked(value: Any, channel: ChannelAddress | None) -> Any:
    """A result as Ray will send it: plain data and arrays as they are, anything else in
    a ``_Checked`` (so that a result which cannot be pickled raises our
    SerializationError, naming the member, as on the local engine)."""
    if plain_data(value) or type(value).__module__ == "numpy":
        return value
    return _Checked(value, channel)


class _Checked:
    """Pickles its value itself, within Ray's pickling of the result (whose hooks for
    refs apply), with its buffers left out of band: no copy is added. Unpickles as the
    value. A value that cannot be pickled fails the call after its report was sent (on
    ``channel``): a second report says so."""

    __slots__ = ("channel", "value")

    def __init__(self, value: Any, channel: ChannelAddress | None) -> None:
        self.value = value
        self.channel = channel

    def __reduce__(self) -> tuple[Any, ...]:
        from ray import cloudpickle

        from distkernel.store.serializability import explain_failure

        buffers: list[pickle.PickleBuffer] = []
        try:
            data = cloudpickle.dumps(self.value, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:  # noqa: BLE001 - named, with the fixes
            error = explain_failure(self.value, exc)
            if self.channel is not None:
                from distkernel.core.exceptions import exception_text

                now = time.time()
                _send(self.channel, False, Report(now, now, _node_id(), _this_process["pid"],
                                                  "", "", error=exception_text(error)))
            raise error from None
        return (_unpickled, (data, *buffers))


def _unpickled(data: bytes, *buffers: Any) -> Any:
    from ray import cloudpickle

    return cloudpickle.loads(data, buffers=buffers)


def _report(call: _Call, with_running: bool, bytes_out: int = 0,
            actor_exit: tuple[str, ...] = ()) -> Report:
    """The call's report. ``with_running``: with the records of the children still
    running too, holding the Ray refs the driver watches them by (the report does not go
    on the channel: it travels as a result, which Ray sends with its refs, or is handed
    over)."""
    buffers = call.buffers
    children = buffers.get("children")
    nested = take_nested(children, with_running) if children and take_nested is not None else ()
    return Report(call.started, time.time(), _node_id(), _this_process["pid"],
                  "".join(buffers.get("stdout", ())), "".join(buffers.get("stderr", ())),
                  call.bytes_in, bytes_out, nested, actor_exit)
