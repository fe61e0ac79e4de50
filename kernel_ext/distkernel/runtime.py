"""``init`` / ``shutdown`` / ``status``: the one cluster of this process.

Every API call goes through ``client()``: inside a worker it is the link to
the driver; in the driver it is the running engine, started on first use.
"""

from __future__ import annotations

import atexit
import dataclasses
import html
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distkernel import config, context
from distkernel.exceptions import DistkernelError

_lock = threading.RLock()
_backend: Any = None
_info: ClusterInfo | None = None
_start_hooks: list[Callable[[Any], None]] = []

LOCAL_ADDRESSES = (None, "local")


@dataclass(frozen=True)
class ClusterInfo:
    """What ``init`` started; shows itself as a one-line summary in a notebook."""

    backend: str
    num_workers: int
    object_store_memory: int
    address: str
    cluster_id: str

    def __repr__(self) -> str:
        return (f"ClusterInfo(backend={self.backend!r}, num_workers={self.num_workers}, "
                f"object_store_memory={config.format_bytes(self.object_store_memory)!r})")

    def _repr_html_(self) -> str:
        store = html.escape(config.format_bytes(self.object_store_memory))
        return (f'<div class="jp-Distkernel-cluster"><b>distkernel</b> {html.escape(self.backend)} '
                f"cluster: {self.num_workers} workers, object store {store}</div>")


def init(num_workers: int | None = None, *, object_store_memory: int | str | None = None,
         address: str | None = None, ignore_reinit_error: bool = True) -> ClusterInfo:
    """Start the cluster (or return the running one when the arguments agree)."""
    global _backend, _info
    if context.worker_client() is not None:
        msg = "init() cannot be called inside a task or actor: the cluster is already running"
        raise DistkernelError(msg)
    if address not in LOCAL_ADDRESSES:
        _reject_address(address)
    with _lock:
        if _backend is not None:
            return _check_compatible(num_workers, object_store_memory)
        workers = config.resolve_num_workers(num_workers)
        memory = config.resolve_store_memory(object_store_memory)
        from distkernel.backends.local import LocalBackend

        _backend = LocalBackend(config.ClusterSettings(workers, memory))
        _info = ClusterInfo("local", workers, memory, "local", _backend.cluster_id)
        for hook in list(_start_hooks):
            hook(_backend)
        return _info


def _reject_address(address: Any) -> None:
    if isinstance(address, str) and (address in ("ray", "auto") or address.startswith("ray://")):
        msg = (f"init(address={address!r}): running on a Ray cluster is not available in this "
               f"version of distkernel yet; use init() for the local engine")
        raise DistkernelError(msg)
    msg = (f"init(address={address!r}) is not a known address: use None or 'local' for the "
           f"local engine")
    raise ValueError(msg)


def _check_compatible(num_workers: int | None, memory: int | str | None) -> ClusterInfo:
    global _info
    assert _info is not None
    if _backend.num_workers != _info.num_workers:  # scaled since: describe the pool as it is
        _info = dataclasses.replace(_info, num_workers=_backend.num_workers)
    wanted_workers = None if num_workers is None else config.resolve_num_workers(num_workers)
    wanted_memory = None if memory is None else config.resolve_store_memory(memory)
    if wanted_workers not in (None, _info.num_workers) or \
            wanted_memory not in (None, _info.object_store_memory):
        msg = (f"distkernel is already running with {_info.num_workers} workers and a "
               f"{config.format_bytes(_info.object_store_memory)} object store; call "
               f"shutdown() first to start it with other settings")
        raise DistkernelError(msg)
    return _info


def is_initialized() -> bool:
    return _backend is not None


def shutdown() -> None:
    """Stop every worker and free every segment; safe to call twice.

    Holds the runtime's lock until the cluster is down, so that an API call made in
    another thread meanwhile waits and then starts a new cluster (as any call after a
    shutdown does) instead of racing the old one's clean-up.
    """
    global _backend, _info
    with _lock:
        backend = _backend
        try:
            if backend is not None:
                backend.shutdown()
        finally:
            _backend, _info = None, None


def backend() -> Any:
    """The driver's engine, started with defaults on first use."""
    current = _backend
    if current is None or current.closing:  # none, or being shut down: wait, then start
        with _lock:
            if _backend is None:
                init()
            current = _backend
    return current


def current_backend() -> Any:
    """The running engine, or None (never starts one)."""
    return _backend


def add_start_hook(hook: Callable[[Any], None]) -> None:
    """Call ``hook(engine)`` for every cluster started from now on (the notebook front)."""
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def remove_start_hook(hook: Callable[[Any], None]) -> None:
    if hook in _start_hooks:
        _start_hooks.remove(hook)


def client() -> Any:
    """Where API calls go: the driver link inside a worker, else the engine."""
    return context.worker_client() or backend()


def cluster_info() -> ClusterInfo | None:
    return _info


atexit.register(shutdown)
