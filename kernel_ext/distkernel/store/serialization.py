"""Values as the store and the wire carry them: ``serialize`` (header + out-of-band
buffers + the refs inside), ``dumps`` / ``deserialize``, and task exceptions with their
tracebacks. A value that cannot be pickled fails here with the culprit named
(``serializability``).
"""

from __future__ import annotations

import io
import os
import pickle
import traceback
from collections.abc import Sequence
from typing import Any

from distkernel.core.exceptions import SerializationError, exception_text
from distkernel.store.pickler import PROTOCOL, Pickler
from distkernel.store.serializability import explain_failure


class Serialized:
    """A pickled value: header bytes, out-of-band buffers, and the refs found inside."""

    __slots__ = ("buffers", "contained", "header", "nbytes")

    def __init__(self, header: bytes, buffers: list[pickle.PickleBuffer],
                 contained: list[str]) -> None:
        self.header = header
        self.buffers = buffers
        self.contained = contained
        # Asked several times per submission (inline or shared, capacity, records).
        self.nbytes = len(header) + sum(b.raw().nbytes for b in buffers) if buffers else \
            len(header)


#: Exact types pickle writes itself, never asking a reducer_override: nothing of ours
#: (registry, notebook classes, refs) can apply to them.
_SCALARS = frozenset({int, float, bool, type(None), str, bytes, complex})
_CONTAINERS = frozenset({tuple, list, dict})
_SMALL = 16


def plain_data(obj: Any, depth: int = 2) -> bool:
    """Scalars, and small tuples / lists / dicts of them (to ``depth`` levels)."""
    cls = type(obj)
    if cls in _SCALARS:
        return True
    if cls not in _CONTAINERS or not depth or len(obj) > _SMALL:
        return False
    if cls is dict:
        for key, value in obj.items():
            if type(key) not in _SCALARS or not plain_data(value, depth - 1):
                return False
        return True
    for item in obj:
        if type(item) not in _SCALARS and not plain_data(item, depth - 1):
            return False
    return True


def serialize(obj: Any, *, out_of_band: bool = True) -> Serialized:
    """Pickle ``obj``; raise SerializationError naming the member that cannot travel.

    Plain data (the arguments and results of most small tasks) skips cloudpickle's
    set-up, a few microseconds per task on both sides.
    """
    if plain_data(obj):
        return Serialized(pickle.dumps(obj, protocol=PROTOCOL), [], [])
    buffers: list[pickle.PickleBuffer] = []
    file = io.BytesIO()
    pickler = Pickler(file, buffers if out_of_band else None)
    try:
        pickler.dump(obj)
    except SerializationError:
        raise
    except Exception as exc:
        raise explain_failure(obj, exc) from exc
    return Serialized(file.getvalue(), buffers, pickler.contained)


def dumps(obj: Any) -> bytes:
    """In-band pickle with our pickler (functions, registries, small control values)."""
    return serialize(obj, out_of_band=False).header


def deserialize(header: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    return pickle.loads(header, buffers=buffers)


def dumps_exception(exc: BaseException) -> tuple[bytes, str]:
    """Pickle a task's exception with its formatted traceback; never fails.

    Exceptions whose constructor does not match their ``args`` (a common
    pattern) cannot be rebuilt by the default reduction, so those are rebuilt
    from ``__new__``, ``args`` and ``__dict__``. One that still cannot travel is
    replaced by a RuntimeError carrying its type name and message.
    """
    text = user_traceback(exc)
    exc.__traceback__ = None
    for reduce in (None, rebuildable):
        try:
            data = dumps(exc) if reduce is None else dumps(reduce(exc))
            pickle.loads(data)
            return data, text
        except Exception:  # noqa: BLE001 - try the next, sturdier way
            continue
    stand_in = RuntimeError(f"{type(exc).__module__}.{exception_text(exc)}")
    return dumps(stand_in), text


#: distkernel's own folder (this module is in its ``store`` package).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_traceback(exc: BaseException) -> str:
    """The formatted traceback of a task's exception, chained exceptions included, with
    distkernel's own frames left out (the worker's loop above the task, a ``get`` inside
    it that raised a nested task's error): what is left is the user's code. Where only
    our frames are left, all are kept."""
    formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    pending = [formatted]
    while pending:
        each = pending.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        users = [f for f in each.stack if not f.filename.startswith(_PACKAGE_DIR)]
        if users:
            each.stack = traceback.StackSummary.from_list(users)
        pending.extend(e for e in (each.__cause__, each.__context__) if e is not None)
    return "".join(formatted.format())


class _ExceptionState:
    """Pickles as a call that rebuilds the exception without running its __init__."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_rebuild_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def rebuildable(exc: BaseException) -> _ExceptionState:
    """``exc`` as an object that any pickler can bring back: rebuilt from its ``args``
    and ``__dict__``, without running its constructor."""
    return _ExceptionState(exc)


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc
