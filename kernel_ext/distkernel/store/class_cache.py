"""Notebook classes pickled once, not with every instance.

cloudpickle sends a class defined in the notebook by value: its whole
definition travels (and is rebuilt) with every instance, 30 to 60 µs a call for a
small class. Here the definition is pickled once per version of the class and
travels as a short blob named by its hash; a receiving process rebuilds each
blob once and reuses the class after that (so instances sent in separate calls
share one class there, as cloudpickle's class tracking does).

A version is the class plus the identity of every attribute in its (and its
notebook-defined bases') ``__dict__``: redefining the class or assigning a
method or attribute makes a new blob; mutating a list held as a class attribute
does not (as with any cached function).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

_Fingerprint = tuple[tuple[int, tuple[tuple[str, int], ...]], ...]

_blobs: weakref.WeakKeyDictionary[type, tuple[_Fingerprint, str, bytes]] = (
    weakref.WeakKeyDictionary())
_loaded: dict[str, type] = {}
_lock = threading.Lock()


def _fingerprint(cls: type) -> _Fingerprint:
    return tuple((id(base), tuple((name, id(value)) for name, value in vars(base).items()))
                 for base in cls.__mro__ if base.__module__ not in ("builtins", "abc"))


def reduce_class(cls: type, pickle_fresh: Callable[[type], tuple[bytes, list[str]]]) -> Any:
    """A reduction of ``cls`` as a cached blob, or None to pickle it the usual way.

    ``pickle_fresh`` pickles the class itself and returns the bytes and the ids of
    ObjectRefs met inside: a class holding refs is not cached, so they are counted.
    """
    fingerprint = _fingerprint(cls)
    cached = _blobs.get(cls)
    if cached is None or cached[0] != fingerprint:
        blob, contained = pickle_fresh(cls)
        if contained:
            return None
        cached = (fingerprint, hashlib.blake2b(blob, digest_size=16).hexdigest(), blob)
        with _lock:
            _blobs[cls] = cached
    return (class_from_blob, (cached[1], cached[2]))


def class_from_blob(digest: str, blob: bytes) -> type:
    """Rebuild a class once per blob; later calls reuse it."""
    cls = _loaded.get(digest)
    if cls is None:
        cls = pickle.loads(blob)
        with _lock:
            cls = _loaded.setdefault(digest, cls)
    return cls
