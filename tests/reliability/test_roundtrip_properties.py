"""Whatever a notebook builds comes back as it was: round trips of stored values, as properties.

Every example goes through real worker processes and real shared memory. A value is
put and got, echoed by a task, put by a task (the worker stores it), and sent in a
container that also holds a ref to it (the worker gets it through the ref). Values
mix nested containers, scalars at their edges, numpy arrays of every non-object
dtype and layout, values above the 100 KiB inline threshold (so they live in shared
memory), instances of notebook-style classes and self-referencing cycles.

Classes and task functions are made inside functions (here and in
``roundtrip_values``): like notebook classes they cannot be imported by the workers,
so they travel by value (a module-level class of an importable test module would be
pickled by reference and prove nothing).

Each test starts its own 2-worker cluster (the autouse ``no_leaks`` fixture shuts it
down after every test), so examples are batched: few tests, many examples each,
derandomized so every run checks the same values.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import distkernel as dk
from tests.conftest import run_driver_script
from tests.reliability.roundtrip_values import (
    NB,
    THRESHOLD,
    assert_same,
    cyclic_values,
    dtypes,
    large_array,
    pointing_at_each_other,
    self_dict,
    self_list,
    slotted_self,
    text,
    values,
)

WAIT = 30  # seconds: a get that takes longer is a hang, not a slow machine


def examples(count: int) -> settings:
    """Settings for a property checked against a live cluster: one cluster serves every
    example of a test (hence the fixture health check), no deadline (a first example
    pays for worker imports), a fixed sequence of examples so CI runs repeat, and no
    explain phase (on a failure it reruns the shrunk example hundreds of times)."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None,
                    print_blob=False, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# --- tasks and an actor, as a notebook cell would define them ----------------------------

def notebook_tasks() -> SimpleNamespace:
    """Remote functions as a notebook cell would define them."""

    @dk.remote
    def echo(value: Any) -> Any:
        return value

    @dk.remote
    def stored_by_worker(value: Any) -> Any:
        return dk.put(value)

    @dk.remote
    def unbox(box: dict[str, Any]) -> tuple[Any, Any, Any]:
        return box["value"], dk.get(box["ref"]), box["ref"]

    @dk.remote
    def writeable_in_worker(box: list[Any]) -> tuple[bool, bool]:
        array = dk.get(box[0])
        return array.flags.writeable, box[1].flags.writeable

    @dk.remote
    def build(make: Callable[[], Any]) -> Any:
        return make()

    @dk.remote
    def throw(make: Callable[[], Any]) -> None:
        value = make()
        if isinstance(value, BaseException):
            raise value
        raise ValueError(value)

    @dk.remote
    def ping() -> str:
        return "pong"

    @dk.remote
    class Keeper:
        """An actor that keeps what it is given for a later call, and does what the tasks
        above do, in its own process."""

        def keep(self, value: Any) -> None:
            self.value = value

        def give(self) -> Any:
            return self.value

        def echo(self, value: Any) -> Any:
            return value

        def build(self, make: Callable[[], Any]) -> Any:
            return make()

        def throw(self, make: Callable[[], Any]) -> None:
            value = make()
            if isinstance(value, BaseException):
                raise value
            raise ValueError(value)

        def ping(self) -> str:
            return "pong"

    return SimpleNamespace(echo=echo, stored_by_worker=stored_by_worker, unbox=unbox,
                           writeable_in_worker=writeable_in_worker, build=build, throw=throw,
                           ping=ping, Keeper=Keeper)


TASKS = notebook_tasks()


@pytest.fixture
def keeper(cluster: Any) -> Any:
    """One actor for every example of a test."""
    return TASKS.Keeper.remote()


@pytest.fixture
def registered(cluster: Any) -> Any:
    """``NB.Registered`` travels as its payload; deregistered again after the test."""
    dk.register_serializer(NB.Registered, serializer=lambda obj: obj.payload,
                           deserializer=NB.Registered)
    yield
    dk.deregister_serializer(NB.Registered)


def test_the_classes_here_cannot_travel_by_reference() -> None:
    """The properties below are about the by-value path: plain pickle must refuse them."""
    for cls in vars(NB).values():
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pickle.dumps(cls)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(TASKS.echo.__wrapped__)


# --- the properties -------------------------------------------------------------------------

@examples(600)
@given(value=st.one_of(values, cyclic_values()))
@example(value=self_list())
@example(value=self_dict())
@example(value=pointing_at_each_other())
@example(value=slotted_self())
@example(value=[np.zeros(42)] * 3)
@example(value=[10**5000, -0.0, math.nan, math.inf, "\U0001f600", b"", bytearray(b"x")])
@example(value={frozenset({math.nan, 0.0}), None, True})
def test_any_value_comes_back_as_it_was_every_way(registered: None, keeper: Any,
                                                  value: Any) -> None:
    """SPEC §3-§4: a value comes back as it was whichever way it travels: put and get, a
    task's argument and result, stored by a worker, through a ref sent beside it (the
    worker gets it), kept by an actor for a later call."""
    ref = dk.put(value)
    assert_same(value, dk.get(ref, timeout=WAIT))
    assert_same(value, dk.get(TASKS.echo.remote(value), timeout=WAIT))
    made_there = dk.get(TASKS.stored_by_worker.remote(value), timeout=WAIT)
    assert_same(value, dk.get(made_there, timeout=WAIT))
    box = {"value": value, "ref": ref}
    as_sent, through_ref, ref_back = dk.get(TASKS.unbox.remote(box), timeout=WAIT)
    assert_same(value, as_sent)
    assert_same(value, through_ref)
    assert_same(value, dk.get(ref_back, timeout=WAIT))
    stored_box = dk.get(dk.put(box), timeout=WAIT)
    assert_same(value, stored_box["value"])
    assert_same(value, dk.get(stored_box["ref"], timeout=WAIT))
    keeper.keep.remote(value)
    assert_same(value, dk.get(keeper.give.remote(), timeout=WAIT))


_contiguous_large = st.builds(large_array, dtypes, st.integers(0, 4),
                              st.sampled_from(["C", "F"]), st.integers(0, 2**32 - 1))


@examples(200)
@given(array=_contiguous_large)
@example(array=large_array(np.dtype("datetime64[ns]"), 2, "F", 1))
@example(array=large_array(np.dtype(">m8[D]"), 0, "C", 2))
@example(array=large_array(np.dtype([("t", "M8[s]"), ("x", "<f4")]), 3, "C", 3))
def test_large_arrays_come_back_as_read_only_views(cluster: Any, array: np.ndarray) -> None:
    """SPEC §3: a large array of any non-object dtype, C or Fortran, 0-d too, is written
    once into shared memory and read as a read-only view, in the driver and in workers."""
    assert array.nbytes >= THRESHOLD and array.flags.writeable
    first, second = dk.get(dk.put([array, array]), timeout=WAIT)
    assert first is second
    for back in (dk.get(dk.put(array), timeout=WAIT), first,
                 dk.get(TASKS.echo.remote(array), timeout=WAIT)):
        assert back.flags.writeable is False
        assert_same(array, back)
    ref = dk.put(array)
    assert dk.get(TASKS.writeable_in_worker.remote([ref, array]), timeout=WAIT) == (False, False)


# --- misbehaving values ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Misbehaving:
    """One kind of value that pickling, unpickling or a task's error report could trip over.

    ``make`` builds a fresh one (in the driver or in a worker). ``outcome`` is what
    sending it must give: ``"refused"`` (it cannot be serialized; ``culprit`` is the
    end of the path the error names after the object itself), ``"travels"`` (it
    round-trips) or ``"fails to load"`` (it pickles, but rebuilding it raises
    ``reason``). ``keeps_class``: raised by a task, it comes back as its own class.
    """

    name: str
    make: Callable[[], Any]
    outcome: Literal["refused", "travels", "fails to load"] = "refused"
    culprit: str = ""
    reason: str = ""
    keeps_class: bool = False


def misbehaving_kinds() -> list[Misbehaving]:
    """Made in a function, so the makers and their classes travel by value."""

    class HoldsLock:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    def lambda_with_lock() -> Any:
        lock = threading.Lock()
        return lambda: lock.locked()

    class ReduceRaises:
        def __reduce__(self) -> Any:
            raise ValueError("cannot reduce this")

    class ReduceGarbage:
        def __reduce__(self) -> Any:
            return (1, 2, 3)

    class ReduceNotATuple:
        def __reduce__(self) -> Any:
            return 42

    class GetstateRaises:
        def __getstate__(self) -> Any:
            raise RuntimeError("no state for you")

    def refuse(reason: str) -> None:
        raise ValueError(reason)

    class RebuildRaises:
        def __reduce__(self) -> Any:
            return (refuse, ("rebuilding refused",))

    class StateNotADict:
        def __reduce__(self) -> Any:
            return (object, (), "not a dict")

    class StrRaises(Exception):
        def __str__(self) -> str:
            raise RuntimeError("__str__ is broken")

    class ReprRaises(Exception):
        def __repr__(self) -> str:
            raise RuntimeError("__repr__ is broken")

    class ReduceRaisesError(Exception):
        def __reduce__(self) -> Any:
            raise RuntimeError("__reduce__ is broken")

    class AllBroken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("__str__ is broken")

        def __repr__(self) -> str:
            raise RuntimeError("__repr__ is broken")

        def __reduce__(self) -> Any:
            raise RuntimeError("__reduce__ is broken")

    class Mismatched(Exception):
        def __init__(self, code: int, detail: str) -> None:
            super().__init__(f"{code}: {detail}")
            self.code = code

    return [
        Misbehaving("object holding a lock", HoldsLock, culprit=".lock"),
        Misbehaving("generator", lambda: (i for i in range(3))),
        Misbehaving("lambda capturing a lock", lambda_with_lock, culprit=".<closure lock>"),
        Misbehaving("__reduce__ raises", ReduceRaises),
        Misbehaving("__reduce__ returns garbage", ReduceGarbage),
        Misbehaving("__reduce__ returns a non-tuple", ReduceNotATuple),
        Misbehaving("__getstate__ raises", GetstateRaises),
        Misbehaving("exception whose __reduce__ raises", lambda: ReduceRaisesError("x"),
                    keeps_class=True),
        Misbehaving("exception whose __str__, __repr__, __reduce__ raise",
                    lambda: AllBroken("x"), keeps_class=True),
        Misbehaving("exception whose __str__ raises", lambda: StrRaises("x"),
                    outcome="travels", keeps_class=True),
        Misbehaving("exception whose __repr__ raises", lambda: ReprRaises("x"),
                    outcome="travels", keeps_class=True),
        Misbehaving("exception whose constructor does not match its args",
                    lambda: Mismatched(7, "detail"), outcome="travels", keeps_class=True),
        Misbehaving("__reduce__ whose rebuild raises", RebuildRaises, outcome="fails to load",
                    reason="rebuilding refused"),
        Misbehaving("__reduce__ returns a state that is not a dict", StateNotADict,
                    outcome="fails to load", reason="state is not a dictionary"),
    ]


def nesting_helpers() -> Callable[[Any, tuple[Any, ...]], Any]:
    """``wrap(value, steps)``, made in a function so that it travels by value: a worker
    builds the same nesting around a value it makes."""

    def wrap(value: Any, steps: tuple[tuple[str, int, tuple[Any, ...]], ...]) -> Any:
        for kind, position, fillers in reversed(steps):
            items = list(fillers)
            items.insert(position, value)
            if kind == "list":
                value = items
            elif kind == "tuple":
                value = tuple(items)
            elif kind == "dict":
                value = {f"k{i}": item for i, item in enumerate(items)}
            else:
                value = NB.Plain(**{f"a{i}": item for i, item in enumerate(items)})
        return value

    return wrap


wrap = nesting_helpers()


@dataclasses.dataclass(frozen=True)
class Nesting:
    """How to wrap a value in containers, and the path an error names to reach it."""

    steps: tuple[tuple[str, int, tuple[Any, ...]], ...]

    def path(self, value: Any) -> str:
        """``list(...)[1]['k0'].a2``: the top object's label, then one step per level."""
        if not self.steps:
            return _top_label(value)
        steps = []
        for kind, position, _ in self.steps:
            steps.append({"list": f"[{position}]", "tuple": f"[{position}]",
                          "dict": f"['k{position}']"}.get(kind, f".a{position}"))
        top = {"list": "list", "tuple": "tuple", "dict": "dict"}.get(self.steps[0][0], "Plain")
        return f"{top}(...)" + "".join(steps)


def _top_label(value: Any) -> str:
    return value.__name__ if callable(value) and hasattr(value, "__name__") else \
        f"{type(value).__name__}(...)"


_fillers = st.lists(st.one_of(st.integers(), text, st.lists(st.integers(), max_size=2)),
                    max_size=3).map(tuple)


@st.composite
def nestings(draw: st.DrawFn) -> Nesting:
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        fillers = draw(_fillers)
        kind = draw(st.sampled_from(["list", "tuple", "dict", "attribute"]))
        steps.append((kind, draw(st.integers(0, len(fillers))), fillers))
    return Nesting(tuple(steps))


def worker_pids() -> set[int]:
    """The pool's processes: a crashed worker is replaced, so its pid changes."""
    return {worker["pid"] for worker in dk.status()["workers"]}


_PHASES = ("put", "argument", "keyword", "actor argument", "return", "actor return", "raise",
           "actor raise")


@examples(500)
@given(kind=st.sampled_from(misbehaving_kinds()), nesting=nestings(),
       phase=st.sampled_from(_PHASES))
def test_misbehaving_values_fail_at_the_call_and_the_pool_keeps_working(
        keeper: Any, kind: Misbehaving, nesting: Nesting, phase: str) -> None:
    """SerializationError at put / .remote / get of a result (naming the path), a TaskError
    for what a task raises; never a hang, never a dead worker or actor; work goes on."""
    assert dk.get([TASKS.ping.remote(), keeper.ping.remote()], timeout=WAIT) == ["pong"] * 2
    workers = worker_pids()
    make_one, steps = kind.make, nesting.steps

    def make() -> Any:
        return wrap(make_one(), steps)

    value = make()
    expected_path = nesting.path(make_one()) + kind.culprit
    send = {"put": lambda: dk.put(value), "argument": lambda: TASKS.echo.remote(value),
            "keyword": lambda: TASKS.echo.remote(value=value),
            "actor argument": lambda: keeper.echo.remote(value),
            "return": lambda: TASKS.build.remote(make),
            "actor return": lambda: keeper.build.remote(make),
            "raise": lambda: TASKS.throw.remote(make),
            "actor raise": lambda: keeper.throw.remote(make)}[phase]

    if phase.endswith("raise"):
        with pytest.raises(dk.TaskError) as raised:
            dk.get(send(), timeout=WAIT)
        if kind.keeps_class and not steps:
            assert isinstance(raised.value, type(value))
    elif kind.outcome == "travels":
        assert_same(value, dk.get(send(), timeout=WAIT))
    elif kind.outcome == "fails to load":  # in a task: its error; in the driver: get's
        loaded_in_task = phase.endswith("argument") or phase == "keyword"
        expected = dk.TaskError if loaded_in_task else dk.SerializationError
        with pytest.raises(expected, match=kind.reason):
            dk.get(send(), timeout=WAIT)
    elif phase.endswith("return"):
        with pytest.raises(dk.SerializationError) as failed:
            dk.get(send(), timeout=WAIT)
        assert failed.value.path == expected_path
    else:
        with pytest.raises(dk.SerializationError) as failed:
            send()
        assert isinstance(failed.value, TypeError)
        assert failed.value.path == expected_path
        if phase != "put":
            assert "echo.remote(...)" in str(failed.value)
    assert dk.get([TASKS.ping.remote(), keeper.ping.remote()], timeout=WAIT) == ["pong"] * 2
    assert worker_pids() == workers


# --- focused regressions --------------------------------------------------------------------

def test_arrays_without_a_buffer_format_are_shared_and_keep_their_dtype(cluster: Any) -> None:
    """numpy pickles arrays whose dtype has no buffer format in band: datetime64 and
    timedelta64 came back as writable copies, big-endian long doubles also in native
    byte order (``>f16`` as ``float128``)."""
    arrays = [np.arange(20_000).astype("datetime64[s]"),
              np.asfortranarray(np.arange(30_000).astype(">m8[us]").reshape(100, 300)),
              np.zeros((), dtype=[("when", "M8[ns]", (20_000,)), ("x", "f4")]),
              np.arange(10_000, dtype=">f16"),
              np.linspace(0, 1, 20_000, dtype=">c32").reshape(100, 200)]
    for array in arrays:
        for back in (dk.get(dk.put(array)), dk.get(TASKS.echo.remote(array))):
            assert back.flags.writeable is False
            assert_same(array, back)


def test_strided_arrays_keep_their_byte_order(cluster: Any) -> None:
    """numpy's in-band pickle of a strided array loads a non-native byte order as the
    native one: ``>i2`` came back as ``int16``, ``>f16`` as ``float128``."""
    for array in (np.arange(120_000, dtype=">i2")[::2], np.arange(12, dtype=">f16")[::3],
                  np.zeros((4, 6), dtype=[("a", ">u4"), ("t", ">M8[s]")])[:, ::2]):
        for back in (dk.get(dk.put(array)), dk.get(TASKS.echo.remote(array))):
            assert back.dtype.str == array.dtype.str
            assert_same(array, back)


def test_an_exception_whose_constructor_does_not_match_its_args_travels(cluster: Any) -> None:
    """Its default reduction calls ``cls(*args)``, which raised TypeError in ``get``."""
    error = NB.MismatchedError(404, "not found")
    error.me = error  # a cycle through its __dict__ loads too
    for back in (dk.get(dk.put([error, error])), dk.get(TASKS.echo.remote([error, error]))):
        assert back[0] is back[1] and back[0].me is back[0]
        assert type(back[0]) is NB.MismatchedError
        assert back[0].args == ("404: not found",) and back[0].code == 404
    made = dk.get(TASKS.build.remote(lambda: {"error": NB.MismatchedError(1, "x")}))
    assert made["error"].code == 1 and str(made["error"]) == "1: x"


def test_a_notebook_named_tuple_travels(cluster: Any) -> None:
    """Passing every class's ``__slots__`` at creation broke ``typing.NamedTuple`` classes,
    whose namespace may not hold one: their instances failed to load anywhere."""
    value = NB.Typed(1, [NB.Pair("a", NB.Typed(2))])
    made = dk.get(TASKS.build.remote(lambda: NB.Typed(1, [NB.Pair("a", NB.Typed(2))])))
    for back in (dk.get(dk.put(value)), dk.get(TASKS.echo.remote(value)), made):
        assert type(back) is NB.Typed and back == value


def test_classes_of_a_real_main_module_travel_every_way(tmp_path: Any) -> None:
    """The closures above stand in for notebook classes; here the classes really live in
    ``__main__``, as a notebook's do, and a value mixing them comes back as it was."""
    done = run_driver_script(tmp_path, """
        import dataclasses, enum, threading, typing
        import numpy as np
        import distkernel as dk

        @dataclasses.dataclass
        class Point:
            x: object
            y: object

        class Row(typing.NamedTuple):
            when: object
            what: object

        class Kind(enum.Enum):
            A = 1

        class Slotted:
            __slots__ = ("a", "b")

        class Locked:
            def __init__(self, payload):
                self.payload, self.lock = payload, threading.Lock()

        @dk.remote
        def echo(value):
            return value

        @dk.remote
        class Keeper:
            def echo(self, value):
                return value

        dk.init(2)
        dk.register_serializer(Locked, serializer=lambda o: o.payload, deserializer=Locked)
        slotted = Slotted()
        slotted.a = np.arange(300_000).astype("datetime64[s]")
        slotted.b = slotted
        point = Point(Row(np.datetime64("2024-01-01"), Kind.A), [Locked({"k": 1})] * 2)
        point.y.append(point)
        value = {"point": point, "slotted": slotted}
        for back in (dk.get(dk.put(value)), dk.get(echo.remote(value)),
                     dk.get(Keeper.remote().echo.remote(value))):
            p, s = back["point"], back["slotted"]
            assert type(p) is Point and type(p.x) is Row and p.x.what is Kind.A
            assert p.y[0] is p.y[1] and p.y[0].payload == {"k": 1} and p.y[2] is p
            assert s.b is s and not s.a.flags.writeable and (s.a == slotted.a).all()
        print("ok")
    """)
    assert done.stdout.split() == ["ok"]
