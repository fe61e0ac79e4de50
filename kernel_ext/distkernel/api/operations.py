"""``put`` / ``get`` / ``wait`` / ``cancel`` / ``timeline`` / ``status``, as in Ray."""

from __future__ import annotations

import numbers
import socket
import threading
from collections.abc import Sequence
from typing import Any

from distkernel.api import runtime
from distkernel.core import context
from distkernel.core.exceptions import DistkernelError, safe_repr
from distkernel.core.refs import ObjectRef, set_value_getter
from distkernel.core.timings import TaskRecord

#: Waits at least this long (seconds) have no limit: lock and poll timeouts stop here.
_LONGEST_WAIT = min(threading.TIMEOUT_MAX, 10.0**8)


def put(value: Any) -> ObjectRef:
    """Store ``value`` now (later changes to it do not change the stored copy)."""
    if isinstance(value, ObjectRef):
        msg = "put() of an ObjectRef is not allowed: pass the ref itself, or put() its value"
        raise TypeError(msg)
    return runtime.client().put(value)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value of a ref, or the values of a list of refs in order."""
    timeout = _checked_timeout(timeout, "get")
    if isinstance(refs, ObjectRef):
        return runtime.client().get([refs], timeout)[0]
    ref_list = _ref_list(refs, "get")
    return runtime.client().get(ref_list, timeout) if ref_list else []


set_value_getter(get)  # for ref.future() and await ref


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """``(ready, not_ready)``: returns once ``num_returns`` refs are ready or at the timeout."""
    timeout = _checked_timeout(timeout, "wait")
    if isinstance(refs, ObjectRef):
        msg = "wait() takes a list of ObjectRefs; wrap a single ref as wait([ref])"
        raise TypeError(msg)
    ref_list = _ref_list(refs, "wait")
    if len(set(ref_list)) != len(ref_list):
        msg = "wait() needs a list of distinct ObjectRefs; remove the duplicates"
        raise ValueError(msg)
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        msg = f"wait(num_returns=...) must be an int >= 1, got {num_returns!r}"
        raise TypeError(msg)
    if not ref_list:  # as Ray: nothing to wait for, even with num_returns=len(refs) == 0
        return [], []
    if num_returns < 1:
        msg = f"wait(num_returns=...) must be an int >= 1, got {num_returns!r}"
        raise ValueError(msg)
    if num_returns > len(ref_list):
        msg = (f"wait(num_returns={num_returns}) is more than the {len(ref_list)} refs given; "
               f"use at most len(refs)")
        raise ValueError(msg)
    return runtime.client().wait(ref_list, num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task making ``ref``: dropped if queued, interrupted if running
    (``force=True`` kills its worker, which is replaced); ``get`` then raises
    TaskCancelledError. A finished task is left alone."""
    if not isinstance(ref, ObjectRef):
        msg = f"cancel() takes an ObjectRef returned by .remote(), got {type(ref).__name__}"
        raise TypeError(msg)
    runtime.client().cancel(ref, force)


def timeline(last: int | None = None) -> list[TaskRecord]:
    """Records of the latest tasks (all kept ones, or the ``last`` N), oldest first."""
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
        msg = f"timeline(last=...) must be None or an int >= 0, got {last!r}"
        raise ValueError(msg)
    engine = runtime.current_engine()
    return [] if engine is None else engine.timeline(last)


def status() -> dict[str, Any]:
    """Workers (id, pid, state, current task, cpu %, rss), object store and backend."""
    return runtime.engine().snapshot().as_status()


def cluster_resources() -> dict[str, float]:
    """Everything the cluster has, by name: ``CPU`` (the pool's size), ``GPU`` and custom
    resources given to ``init``, and ``object_store_memory`` (bytes), as Ray reports them."""
    return _resource_table()[0]


def available_resources() -> dict[str, float]:
    """What is free right now: ``cluster_resources()`` less what running tasks and actors
    hold, and the store's free bytes. A resource all in use is left out, as in Ray."""
    return {name: amount for name, amount in _resource_table()[1].items() if amount > 0}


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes, in Ray's form: the local engine is one node, this machine."""
    total = cluster_resources()
    node_id = runtime.client().cluster_id
    address = runtime.NODE_IP_ADDRESS
    return [{"NodeID": node_id, "Alive": True, "alive": True, "NodeManagerAddress": address,
             "NodeManagerHostname": socket.gethostname(), "NodeName": address,
             "Resources": total, "Labels": {}}]


def _resource_table() -> tuple[dict[str, float], dict[str, float]]:
    """(total, available) from the engine's status, with the store's bytes."""
    if context.worker_client() is not None:
        msg = ("cluster_resources(), available_resources() and nodes() answer in the driver "
               "only; pass what a task needs to know as an argument")
        raise DistkernelError(msg)
    snapshot = status()
    store, table = snapshot["object_store"], snapshot["resources"]
    total, available = dict(table["total"]), dict(table["available"])
    total["object_store_memory"] = float(store["capacity"])
    available["object_store_memory"] = float(max(0, store["capacity"] - store["used_bytes"]))
    return total, available


def _checked_timeout(timeout: Any, what: str) -> float | None:
    """The timeout in seconds, or None for no limit (also for ``inf`` and timeouts longer
    than the operating system can wait, as Ray takes them)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or \
            timeout != timeout or timeout < 0:  # NaN is the one number unequal to itself
        msg = (f"{what}(timeout=...) must be None or a number of seconds >= 0, got "
               f"{safe_repr(timeout)}")
        raise ValueError(msg)
    return None if timeout >= _LONGEST_WAIT else float(timeout)  # type: ignore[operator]


def _ref_list(refs: Any, what: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        msg = (f"{what}() takes an ObjectRef or a list of ObjectRefs, got "
               f"{type(refs).__name__}")
        raise TypeError(msg)
    for index, ref in enumerate(refs):
        if not isinstance(ref, ObjectRef):
            msg = (f"{what}() takes ObjectRefs; item {index} is a {type(ref).__name__}. "
                   f"Pass what .remote() or put() returned")
            raise TypeError(msg)
    return list(refs)
