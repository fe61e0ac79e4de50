"""SPEC §4's serialization journey through real workers: what travels, what fails, the fixes."""

from __future__ import annotations

import io
import sqlite3
import threading

import numpy as np
import pytest

import distkernel as dk


class A:
    """Holds a lock, so it cannot be serialized as is."""

    def __init__(self, x):
        self.x = x
        self.lock = threading.Lock()


@dk.remote
def echo(value):
    return value


@dk.remote
def make_a(x):
    return A(x)


def test_class_with_lock_fails_at_put_and_at_remote(cluster):
    with pytest.raises(dk.SerializationError) as info:
        dk.put(A(1))
    text = str(info.value)
    assert "A(...).lock: _thread.lock cannot be serialized" in text
    assert "__reduce__" in text and "register_serializer" in text and "helper wrapper" in text
    with pytest.raises(dk.SerializationError, match=r"argument 0 of .*echo\.remote"):
        echo.remote(A(1))
    with pytest.raises(dk.SerializationError, match=r"A\(\.\.\.\)\.lock"):
        dk.get(make_a.remote(1))  # a return value that cannot travel fails at get()


def test_reduce_fix():
    class DBConnection:
        def __init__(self, path):
            self.path = path
            self.conn = sqlite3.connect(path)

        def __reduce__(self):
            return DBConnection, (self.path,)

    dk.init(2)
    copy = dk.get(echo.remote(DBConnection(":memory:")))
    assert type(copy).__name__ == "DBConnection" and copy.path == ":memory:"
    assert copy.conn.execute("select 1").fetchone() == (1,)


def test_register_and_deregister_serializer_twice(cluster):
    def serializer(a):
        return a.x

    def deserializer(x):
        return A(x)

    dk.register_serializer(A, serializer=serializer, deserializer=deserializer)
    try:
        assert dk.get(dk.put(A(1))).x == 1
        assert dk.get(echo.remote(A(2))).x == 2  # argument and return value in a worker
        assert dk.get(make_a.remote(3)).x == 3  # made in the worker, sent back
    finally:
        dk.deregister_serializer(A)
    with pytest.raises(dk.SerializationError):
        dk.put(A(1))
    dk.deregister_serializer(A)  # deregistering an unregistered class does nothing
    dk.util.register_serializer(A, serializer=serializer, deserializer=deserializer)
    assert dk.get(dk.put(A(4))).x == 4
    dk.util.deregister_serializer(A)
    with pytest.raises(dk.SerializationError):
        dk.get(make_a.remote(5))


def test_registered_deserializer_travels_with_data(cluster):
    class Notebook:
        def __init__(self, secret):
            self.secret = secret
            self.lock = threading.Lock()

    dk.register_serializer(Notebook, serializer=lambda n: n.secret * 2,
                           deserializer=lambda doubled: Notebook(doubled // 2))
    try:
        @dk.remote
        def reveal(note):
            return note.secret

        assert dk.get(reveal.remote(Notebook(21))) == 21
    finally:
        dk.deregister_serializer(Notebook)


def test_helper_wrapper_leaves_bare_class_alone(cluster):
    class SerializationHelperForA:
        def __init__(self, a):
            self.a = a

        def __reduce__(self):
            return A, (self.a.x,)

    restored = dk.get(dk.put(SerializationHelperForA(A(1))))
    assert isinstance(restored, A) and restored.x == 1
    with pytest.raises(dk.SerializationError):
        dk.put(A(1))


def test_redefined_class_is_used_in_new_form(cluster):
    def define(version):
        class Model:
            def predict(self):
                return version

        return Model

    @dk.remote
    def predict(model):
        return model.predict()

    first, second = define(1), define(2)
    assert dk.get(predict.remote(first())) == 1
    assert dk.get(predict.remote(second())) == 2


def test_getstate_is_used(cluster):
    class Cache:
        def __init__(self):
            self.data = {"k": 1}
            self.lock = threading.Lock()

        def __getstate__(self):
            return {"data": self.data}

        def __setstate__(self, state):
            self.data = state["data"]
            self.lock = threading.Lock()

    copy = dk.get(echo.remote(Cache()))
    assert copy.data == {"k": 1} and copy.lock is not None


def test_numpy_identity_and_lambdas_in_one_object(cluster):
    shared = np.zeros(42)
    payload = {"arrays": [shared] * 99, "fn": lambda v: v + 1}
    back = dk.get(echo.remote(payload))
    assert back["arrays"][0] is back["arrays"][98]
    assert back["fn"](1) == 2


def test_inspect_serializability_prints_tree():
    lock = threading.Lock()

    def uses_lock():
        print(lock)

    out = io.StringIO()
    ok, failures = dk.inspect_serializability(uses_lock, name="test", file=out)
    assert not ok and failures
    text = out.getvalue()
    assert "test" in text and "lock" in text and "FAIL" in text
    assert dk.util.inspect_serializability(lambda: 1, file=io.StringIO())[0] is True


def test_notebook_class_travels_once_and_changes_still_arrive(cluster):
    def define():
        class Tag:
            label = "first"

        return Tag

    Tag = define()

    @dk.remote
    class Keeper:
        def __init__(self):
            self.seen = []

        def keep(self, item):
            self.seen.append(item)
            return type(item).label

        def same_class(self):
            return all(type(i) is type(self.seen[0]) for i in self.seen)

    keeper = Keeper.remote()
    assert dk.get([keeper.keep.remote(Tag()) for _ in range(3)]) == ["first"] * 3
    assert dk.get(keeper.same_class.remote()) is True  # one class there, as locally
    Tag.label = "second"  # an attribute assigned later is a new version of the class
    assert dk.get(keeper.keep.remote(Tag())) == "second"


def test_class_holding_a_ref_keeps_it_alive(cluster):
    def define(ref):
        class Holder:
            payload = ref

        return Holder

    holder = define(dk.put(np.arange(300_000)))

    @dk.remote
    def read(cls):
        return int(dk.get(cls.payload)[-1])

    assert dk.get(read.remote(holder)) == 299_999
