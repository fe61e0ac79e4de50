"""``ObjectRef``: a handle to a value in the object store.

Each process counts the ObjectRefs alive in it through one ``RefTracker``: the
driver's tracker is the object store's reference count; a worker's tracker
reports first-alive / last-gone transitions to the driver, so an object stays
stored while any process still holds a ref to it.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import concurrent.futures


class RefTracker(Protocol):
    def add(self, object_id: str) -> None: ...

    def remove(self, object_id: str) -> None: ...


class _NoTracker:
    def add(self, object_id: str) -> None:
        pass

    def remove(self, object_id: str) -> None:
        pass


_tracker: RefTracker = _NoTracker()


def _no_getter(ref: ObjectRef) -> Any:
    msg = f"{ref!r}.future() needs distkernel's API: import distkernel first"
    raise RuntimeError(msg)


#: How ``future()`` and ``await`` read a value: the public ``get``, which the API layer
#: (above this one) sets when it is imported.
_get_value: Callable[[ObjectRef], Any] = _no_getter


def set_value_getter(getter: Callable[[ObjectRef], Any]) -> None:
    global _get_value
    _get_value = getter


def set_tracker(tracker: RefTracker | None) -> None:
    """Install this process's tracker (``None``: stop counting)."""
    global _tracker
    _tracker = tracker if tracker is not None else _NoTracker()


class _IdMaker:
    """Unique ids without coordination: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._reset()
        # A forked child must not repeat its parent's ids (checked here, not per id).
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    @property
    def prefix(self) -> str:
        return self._prefix

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_id = _IdMaker()


class ObjectRef:
    """A reference to an object in the store; pass it to tasks or ``get`` its value."""

    __slots__ = ("__weakref__", "_cluster", "_id")

    def __init__(self, object_id: str, cluster_id: str) -> None:
        self._id = object_id
        self._cluster = cluster_id
        _tracker.add(object_id)

    def __del__(self) -> None:
        try:
            _tracker.remove(self._id)
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to count
            pass

    @classmethod
    def counted(cls, object_id: str, cluster_id: str) -> ObjectRef:
        """A ref whose count the caller already took (the driver, when it registers the object)."""
        ref = cls.__new__(cls)
        ref._id = object_id
        ref._cluster = cluster_id
        return ref

    @property
    def cluster_id(self) -> str:
        return self._cluster

    def hex(self) -> str:
        """The object id, as Ray's ``ObjectRef.hex()``."""
        return self._id

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectRef, (self._id, self._cluster))

    def future(self) -> concurrent.futures.Future[Any]:
        """A future of the value (as Ray's ``ref.future()``): ``get`` on a thread of its own."""
        return _waiting_threads().submit(_get_value, self)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await ref`` in an async actor method or any coroutine: waits without holding up
        the event loop."""
        import asyncio  # only here: importing it costs every process ~12 ms at start-up

        return asyncio.wrap_future(self.future()).__await__()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"


@functools.cache
def _waiting_threads() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that wait in get() for ``ref.future()`` and ``await ref``, made on first use."""
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(thread_name_prefix="distkernel-await")


def stop_waiting_threads() -> None:
    """Let the threads of ``ref.future()`` end (the cluster is down, so their gets do);
    the next future() makes new ones. Not waited for: this may run in one of them."""
    if _waiting_threads.cache_info().currsize:
        _waiting_threads().shutdown(wait=False)
        _waiting_threads.cache_clear()
