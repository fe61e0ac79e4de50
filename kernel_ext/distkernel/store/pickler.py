"""Our pickler: cloudpickle, protocol 5 with out-of-band buffers, and a serializer registry.

Notebook-defined functions and classes travel by value (cloudpickle). Large
contiguous buffers (numpy arrays) are handed out of band, so the object store
writes each once into shared memory and readers get zero-copy views. Classes
registered with ``register_serializer`` are reduced as ``deserializer(serializer(obj))``
by our own ``reducer_override``: no library table is patched (habit 6).
"""

from __future__ import annotations

import inspect
import io
import pickle
import threading
import types
from collections.abc import Callable
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as cloudpickle_internals

from distkernel.core.refs import ObjectRef
from distkernel.store import class_cache

PROTOCOL = 5


class SerializerRegistry:
    """Per-class custom (de)serializers; shared by every pickler of this process."""

    def __init__(self) -> None:
        self._entries: dict[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {}
        self._lock = threading.Lock()
        self.version = 0

    def register(self, cls: type, serializer: Callable[[Any], Any],
                 deserializer: Callable[[Any], Any]) -> None:
        if not isinstance(cls, type):
            msg = f"register_serializer needs a class as its first argument, got {cls!r}"
            raise TypeError(msg)
        for label, fn in (("serializer", serializer), ("deserializer", deserializer)):
            if not callable(fn):
                msg = (f"register_serializer({cls.__name__}, ...): {label} must be callable, "
                       f"got {fn!r}")
                raise TypeError(msg)
        with self._lock:
            self._entries[cls] = (serializer, deserializer)
            self.version += 1

    def deregister(self, cls: type) -> bool:
        """Forget ``cls``; True if it was registered (deregistering twice does nothing)."""
        with self._lock:
            found = self._entries.pop(cls, None) is not None
            if found:
                self.version += 1
            return found

    def lookup(self, cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
        return self._entries.get(cls) if self._entries else None

    def __contains__(self, cls: type) -> bool:
        return cls in self._entries

    def items(self) -> list[tuple[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]]]:
        """``(class, (serializer, deserializer))`` pairs, a copy."""
        with self._lock:
            return list(self._entries.items())

    def dump(self) -> bytes:
        """The whole registry, pickled by value, for shipping to workers."""
        return cloudpickle.dumps(self.items(), protocol=PROTOCOL)

    def load(self, data: bytes) -> None:
        """Replace the registry with one a driver shipped."""
        items = pickle.loads(data)
        with self._lock:
            self._entries = dict(items)
            self.version += 1


registry = SerializerRegistry()


def _from_registered(deserializer: Callable[[Any], Any], data: Any) -> Any:
    return deserializer(data)


class Pickler(cloudpickle.Pickler):
    """cloudpickle plus the registry and a record of the ObjectRefs it met."""

    def __init__(self, file: io.BytesIO, buffers: list[pickle.PickleBuffer] | None,
                 fresh_class: type | None = None) -> None:
        callback = buffers.append if buffers is not None else None
        super().__init__(file, protocol=PROTOCOL, buffer_callback=callback)
        self.contained: list[str] = []
        self._fresh_class = fresh_class  # the class being pickled for the cache itself

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is ObjectRef:
            self.contained.append(obj.hex())
            return NotImplemented
        entry = registry.lookup(cls)
        if entry is not None:
            serializer, deserializer = entry
            return (_from_registered, (deserializer, serializer(obj)))
        if cls is types.CodeType:
            return _code_reduce_keeping_filename(obj)
        if isinstance(obj, type) and not cloudpickle_internals._should_pickle_by_reference(obj):
            if obj is not self._fresh_class:
                reduced = class_cache.reduce_class(obj, _pickle_class)
                if reduced is not None:
                    return reduced
            return _keep_slots(obj, super().reducer_override(obj))
        if cls.__name__ == "ndarray" and cls.__module__ == "numpy":
            reduced = _array_reduce(obj)
            if reduced is not None:
                return reduced
        if isinstance(obj, BaseException) and _constructor_refuses_args(obj):
            return (_bare_exception, (cls, obj.args), _exception_state(obj))
        return super().reducer_override(obj)


def _array_reduce(array: Any) -> Any:
    """A reduction that keeps the array's dtype and bytes as they are, or None to let
    numpy pickle it (which it does well for every other array).

    numpy hands a contiguous array's buffer out of band only when the array exports
    the buffer protocol, which datetime64 / timedelta64 and non-native long doubles
    (``>f16``), also as fields of a structured dtype, do not: they were copied into
    the pickle and came back writable. Such arrays travel here as opaque void items
    (which numpy does hand out of band) viewed as their dtype again on arrival.

    A strided array is pickled in band, and numpy turns a non-native byte order
    into the native one on loading (``>i2`` came back as ``int16``); those travel
    here as a contiguous copy of their bytes, writable on arrival as numpy's own.
    """
    dtype = array.dtype
    if dtype.hasobject or dtype.itemsize == 0:
        return None
    opaque = f"V{dtype.itemsize}"
    if array.flags.c_contiguous or array.flags.f_contiguous:
        try:
            memoryview(array).release()
        except ValueError:  # "cannot include dtype 'M' in a buffer" and the like
            return (_as_dtype, (array.view(opaque), dtype))
        return None
    if dtype.isnative:
        return None
    return (_array_from_bytes, (bytearray(array.copy(order="C").view(opaque)), dtype,
                                array.shape))


def _as_dtype(raw: Any, dtype: Any) -> Any:
    return raw.view(dtype)


def _array_from_bytes(data: bytearray, dtype: Any, shape: tuple[int, ...]) -> Any:
    import numpy  # only ever called for a numpy array, so numpy is loaded already

    return numpy.frombuffer(data, dtype=dtype).reshape(shape)


def _constructor_refuses_args(exc: BaseException) -> bool:
    """True when the default reduction, ``type(exc)(*exc.args)``, would fail on load.

    A common pattern is ``__init__(self, a, b)`` calling ``super().__init__(message)``:
    ``args`` is then the message alone, and rebuilding raised TypeError in ``get``.
    """
    cls = type(exc)
    if cls.__reduce__ is not BaseException.__reduce__ or \
            cls.__reduce_ex__ is not object.__reduce_ex__:
        return False  # the class says how to rebuild it
    try:
        inspect.signature(cls).bind(*exc.args)
    except TypeError:
        return True
    except Exception:  # noqa: BLE001 - no signature (a builtin constructor): takes any args
        return False
    return False


def _exception_state(exc: BaseException) -> dict[str, Any] | None:
    state = getattr(exc, "__dict__", None)
    return dict(state) if state else None


def _bare_exception(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """The exception without running its ``__init__``; pickle then sets its ``__dict__``
    (after memoizing it, so an exception that refers to itself still loads)."""
    exc = cls.__new__(cls)
    exc.args = args
    return exc


def _pickle_class(cls: type) -> tuple[bytes, list[str]]:
    """A notebook class by value (cloudpickle), for the class cache."""
    file = io.BytesIO()
    pickler = Pickler(file, None, fresh_class=cls)
    pickler.dump(cls)
    return file.getvalue(), pickler.contained


def _keep_slots(cls: type, reduced: Any) -> Any:
    """cloudpickle's class reduction, with ``__slots__`` given to the class when it is made.

    cloudpickle sets ``__slots__`` after making the class skeleton, which makes no slot
    descriptors: instances then fail to load in another process ("object has no attribute
    '__dict__'"). Passing it at creation, as ``class`` statements do, makes them.

    Empty slots make no descriptors, so they are left to cloudpickle: the namedtuple
    machinery writes ``__slots__ = ()`` itself, and ``typing.NamedTuple`` refuses a
    class namespace that already holds one ("Cannot overwrite NamedTuple attribute").
    """
    slots = vars(cls).get("__slots__")
    if not slots or not isinstance(reduced, tuple) or \
            reduced[0] is not cloudpickle_internals._make_skeleton_class:
        return reduced
    constructor, name, bases, type_kwargs, tracker_id, extra = reduced[1]
    type_kwargs = {**type_kwargs, "__slots__": slots}
    return (reduced[0], (constructor, name, bases, type_kwargs, tracker_id, extra), *reduced[2:])


def _code_reduce_keeping_filename(code: types.CodeType) -> Any:
    """cloudpickle's reduction, but with the real file name instead of ``<dynamic-code>``:
    a remote traceback can then be mapped back to the notebook cell that defined it."""
    rebuild, args = cloudpickle_internals._code_reduce(code)
    return rebuild, tuple(code.co_filename if isinstance(a, str) and a == "<dynamic-code>"
                          else a for a in args)


def try_dumps(obj: Any) -> BaseException | None:
    """The exception pickling ``obj`` raises, or None: the probe the culprit search uses."""
    file = io.BytesIO()
    try:
        Pickler(file, None).dump(obj)
    except Exception as exc:  # noqa: BLE001 - every pickling failure is explained
        return exc
    return None
