"""Values for the round-trip properties: notebook-style classes, hypothesis strategies
that build nested values (with large parts and cycles), and a comparison that also checks
identity inside one value.

The classes are made inside a function: like notebook classes they cannot be imported
by the workers, so they travel by value (a module-level class of an importable module
would be pickled by reference and prove nothing).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import threading
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from distkernel.core import config

THRESHOLD = config.INLINE_THRESHOLD


# --- notebook-style classes -----------------------------------------------------------------

def notebook_classes() -> SimpleNamespace:
    """The kinds of classes a notebook defines."""

    @dataclasses.dataclass
    class Point:
        x: Any
        y: Any

    @dataclasses.dataclass(frozen=True, slots=True)
    class FrozenPoint:
        x: Any
        y: Any

    class Typed(NamedTuple):
        x: Any
        y: Any = None

    Pair = collections.namedtuple("Pair", "first second")

    class Color(enum.Enum):
        RED = 1
        GREEN = "green"

    class Tagged(list):  # type: ignore[type-arg]
        """A list with an attribute of its own."""

        def __init__(self, items: Any = ()) -> None:
            super().__init__(items)
            self.tag = "tagged"

    class Plain:
        def __init__(self, **attributes: Any) -> None:
            self.__dict__.update(attributes)

    class Slotted:
        __slots__ = ("a", "b")

    class Rebuilt:
        """Says how to rebuild itself."""

        def __init__(self, payload: Any) -> None:
            self.payload = payload

        def __reduce__(self) -> tuple[Any, ...]:
            return (type(self), (self.payload,))

    class Registered:
        """Holds a lock, so it travels only through the serializer registered for it."""

        def __init__(self, payload: Any) -> None:
            self.payload = payload
            self.lock = threading.Lock()

    class MismatchedError(Exception):
        """Its constructor takes other arguments than the ``args`` it keeps."""

        def __init__(self, code: int, detail: str) -> None:
            super().__init__(f"{code}: {detail}")
            self.code = code

    return SimpleNamespace(Point=Point, FrozenPoint=FrozenPoint, Typed=Typed, Pair=Pair,
                           Color=Color, Tagged=Tagged, Plain=Plain, Slotted=Slotted,
                           Rebuilt=Rebuilt, Registered=Registered,
                           MismatchedError=MismatchedError)


NB = notebook_classes()


def new_plain(x: Any, y: Any) -> Any:
    """A plain instance whose attributes live in its ``__dict__``."""
    return NB.Plain(x=x, y=y)


def new_slotted(a: Any, b: Any, set_b: bool) -> Any:
    """A slotted instance; one slot may stay unset, which must stay unset."""
    obj = NB.Slotted()
    obj.a = a
    if set_b:
        obj.b = b
    return obj


# --- comparing what came back ---------------------------------------------------------------

_MISSING = object()


class Comparison:
    """Structural equality that also checks identity inside one value.

    Mutable objects (lists, dicts, sets, bytearrays, arrays, instances) are paired
    with their copies: met again, an original must meet the same copy (a value
    shared three times comes back shared, a cycle comes back as a cycle), and two
    originals must not come back as one copy. Floats compare nan-aware and keep the
    sign of zero; arrays compare dtype, shape, memory order and each field.
    """

    def __init__(self) -> None:
        self.copies: dict[int, int] = {}
        self.originals: dict[int, int] = {}

    def check(self, expected: Any, actual: Any, path: str = "value") -> None:
        assert type(actual) is type(expected), \
            f"{path}: {type(expected).__name__} came back as {type(actual).__name__}"
        if _tracked(expected) and not self._pair(expected, actual, path):
            return
        if isinstance(expected, enum.Enum):
            assert actual is expected, f"{path}: {expected} came back as another member"
        elif isinstance(expected, np.generic):
            _check_array(np.asarray(expected), np.asarray(actual), path)
        elif isinstance(expected, float):
            assert _same_float(expected, actual), f"{path}: {expected!r} came back as {actual!r}"
        elif isinstance(expected, complex):
            assert _same_float(expected.real, actual.real) and \
                _same_float(expected.imag, actual.imag), f"{path}: {expected!r} != {actual!r}"
        elif isinstance(expected, np.ndarray):
            _check_array(expected, actual, path)
        elif isinstance(expected, (list, tuple)):
            assert len(actual) == len(expected), f"{path}: length {len(actual)}"
            for index, (one, other) in enumerate(zip(expected, actual)):
                self.check(one, other, f"{path}[{index}]")
        elif isinstance(expected, dict):
            assert len(actual) == len(expected), f"{path}: {len(actual)} keys"
            for (key, one), (other_key, other) in zip(expected.items(), actual.items()):
                Comparison().check(key, other_key, f"{path} key {key!r}")
                self.check(one, other, f"{path}[{key!r}]")
        elif isinstance(expected, (set, frozenset)):
            _check_set(expected, actual, path)
        elif isinstance(expected, BaseException):
            self.check(expected.args, actual.args, f"{path}.args")
            self.check(vars(expected), vars(actual), f"{path}.__dict__")
        elif isinstance(expected, NB.Registered):
            self.check(expected.payload, actual.payload, f"{path}.payload")
        elif isinstance(expected, NB.Slotted):
            for slot in NB.Slotted.__slots__:
                self.check(getattr(expected, slot, _MISSING), getattr(actual, slot, _MISSING),
                           f"{path}.{slot}")
        elif hasattr(expected, "__slots__") and type(expected).__module__ == __name__:
            for slot in type(expected).__slots__:
                self.check(getattr(expected, slot), getattr(actual, slot), f"{path}.{slot}")
        elif not _own_attributes(expected):
            assert actual == expected, f"{path}: {expected!r} came back as {actual!r}"
        if _own_attributes(expected):
            self.check(vars(expected), vars(actual), f"{path}.__dict__")

    def _pair(self, expected: Any, actual: Any, path: str) -> bool:
        """Record original -> copy; False when this pair was compared already."""
        known = self.copies.get(id(expected))
        if known is not None:
            assert known == id(actual), f"{path}: one object came back as several copies"
            return False
        assert id(actual) not in self.originals, f"{path}: two objects came back as one"
        self.copies[id(expected)] = id(actual)
        self.originals[id(actual)] = id(expected)
        return True


def _own_attributes(value: Any) -> bool:
    """An instance of a class made here whose ``__dict__`` is part of its value."""
    return type(value).__module__ == __name__ and hasattr(value, "__dict__") and \
        not isinstance(value, (enum.Enum, BaseException, NB.Registered))


def _tracked(value: Any) -> bool:
    """Objects pickle keeps one copy of (so identity inside a value must survive)."""
    return isinstance(value, (list, dict, set, bytearray, np.ndarray, BaseException)) or \
        type(value).__module__ == __name__


def _same_float(one: float, other: float) -> bool:
    if math.isnan(one):
        return math.isnan(other)
    return one == other and math.copysign(1.0, one) == math.copysign(1.0, other)


def _check_array(expected: np.ndarray, actual: np.ndarray, path: str) -> None:
    assert actual.dtype == expected.dtype, f"{path}: dtype {expected.dtype} -> {actual.dtype}"
    assert actual.shape == expected.shape, f"{path}: shape {expected.shape} -> {actual.shape}"
    if expected.flags.f_contiguous and not expected.flags.c_contiguous:
        assert actual.flags.f_contiguous, f"{path}: a Fortran-ordered array lost its order"
    assert _same_items(expected, actual), f"{path}: the values differ"


def _same_items(expected: np.ndarray, actual: np.ndarray) -> bool:
    """Field by field: numbers nan-aware and with the sign of zero, anything else bitwise.

    Not the whole array's bytes: numpy leaves the padding between aligned fields and
    inside long doubles undefined whenever it copies, so those bytes carry no value.
    """
    names = expected.dtype.names
    if names:
        return all(_same_items(expected[name], actual[name]) for name in names)
    if expected.dtype.kind in "fc":
        return _same_numbers(expected, actual)
    opaque = f"V{expected.dtype.itemsize}"
    return expected.dtype.itemsize == 0 or \
        expected.view(opaque).tobytes() == actual.view(opaque).tobytes()


def _same_numbers(expected: np.ndarray, actual: np.ndarray) -> bool:
    if expected.dtype.kind == "c":
        return _same_numbers(expected.real, actual.real) and \
            _same_numbers(expected.imag, actual.imag)
    nan = np.isnan(expected)
    numbers, others = expected[~nan], actual[~nan]
    return bool(np.array_equal(nan, np.isnan(actual)) and np.array_equal(numbers, others)
                and np.array_equal(np.signbit(numbers), np.signbit(others)))


def _check_set(expected: set[Any] | frozenset[Any], actual: Any, path: str) -> None:
    """Elements match one to one (equal nans are distinct objects, so ``==`` cannot tell)."""
    assert len(actual) == len(expected), f"{path}: {len(actual)} elements"
    left = list(actual)
    for element in expected:
        for index, candidate in enumerate(left):
            try:
                Comparison().check(element, candidate)
            except AssertionError:
                continue
            del left[index]
            break
        else:
            raise AssertionError(f"{path}: {element!r} did not come back")


def assert_same(expected: Any, actual: Any) -> None:
    """Raise AssertionError naming the first place where ``actual`` is not ``expected``."""
    Comparison().check(expected, actual)


# --- values ---------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=12)
_hashable_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=-(2**4000), max_value=2**4000),
    st.floats(), st.sampled_from([-0.0, math.nan, math.inf, -math.inf]),
    st.complex_numbers(), text, st.binary(max_size=12))
_hashables = _hashable_scalars | st.frozensets(_hashable_scalars, max_size=4)

_scalar_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64, 128)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128, 256)),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(endianness="?", max_len=6),
    hnp.unicode_string_dtypes(endianness="?", max_len=6))
_structured_dtypes = hnp.array_dtypes(_scalar_dtypes, max_size=3, allow_subarrays=True)
dtypes = st.one_of(
    _scalar_dtypes, _structured_dtypes,
    _structured_dtypes.map(lambda d: np.dtype(
        {"names": d.names, "formats": [d.fields[n][0] for n in d.names]}, align=True)),
).filter(lambda d: d.itemsize > 0)

_LAYOUTS = ("C", "F", "strided", "transposed")


def laid_out(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values in Fortran order, as a strided slice, or transposed."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return array[..., ::2]
    if layout == "transposed":
        return array.T
    return array


_small_arrays = st.builds(
    laid_out, hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                   max_side=3)),
    st.sampled_from(_LAYOUTS))


def large_array(dtype: np.dtype, ndim: int, layout: str, seed: int) -> np.ndarray:
    """Random bytes seen as ``dtype``, over twice the inline threshold (a strided slice
    of it is still above), in ``ndim`` dimensions; 0-d through one large record."""
    count = -(-2 * THRESHOLD // dtype.itemsize)
    if ndim == 0:
        dtype, shape = np.dtype([("items", dtype, (count,))]), ()
    else:
        shape = (2,) * (ndim - 1) + (-(-count // 2 ** (ndim - 1)),)
    nbytes = math.prod(shape) * dtype.itemsize
    words = np.random.default_rng(seed).integers(0, 0x110000, -(-nbytes // 4), dtype=np.uint32)
    array = words.view(np.uint8)[:nbytes].view(dtype).reshape(shape)
    return laid_out(array, layout)


_large_arrays = st.builds(large_array, dtypes, st.integers(0, 4), st.sampled_from(_LAYOUTS),
                          st.integers(0, 2**32 - 1))


def large_blob(kind: type, seed: int) -> Any:
    """bytes, a bytearray or a str above the inline threshold."""
    letters = np.random.default_rng(seed).integers(97, 123, THRESHOLD + 1000, dtype=np.uint8)
    data = letters.tobytes()
    return data.decode() + "é∂" if kind is str else kind(data)


_large_blobs = st.builds(large_blob, st.sampled_from([bytes, bytearray, str]),
                         st.integers(0, 2**32 - 1))


def near_threshold(offset: int, as_bytes: bool) -> Any:
    """An array or bytes whose pickle is a little below, at or above the inline threshold."""
    array = np.arange(THRESHOLD + offset, dtype=np.uint8)
    return array.tobytes() if as_bytes else array


_near_threshold = st.builds(near_threshold, st.integers(-400, 100), st.booleans())

_numpy_scalars = _scalar_dtypes.flatmap(
    lambda dtype: hnp.from_dtype(dtype).map(lambda v: np.asarray(v, dtype=dtype)[()]))

_leaves = st.one_of(
    _hashables, st.binary(max_size=12).map(bytearray), _numpy_scalars,
    st.sampled_from(list(NB.Color)), _small_arrays,
    st.one_of(_large_arrays, _large_blobs, _near_threshold),
    st.builds(lambda code, detail: NB.MismatchedError(code, detail), st.integers(), text))


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_hashables, children, max_size=4),
        st.sets(_hashables, max_size=4),
        st.frozensets(_hashables, max_size=4),
        children.map(lambda child: [child] * 3),
        st.builds(lambda x, y: NB.Point(x, y), children, children),
        st.builds(lambda x, y: NB.FrozenPoint(x, y), children, children),
        st.builds(lambda x, y: NB.Typed(x, y), children, children),
        st.builds(lambda x, y: NB.Pair(x, y), children, children),
        st.lists(children, max_size=3).map(lambda items: NB.Tagged(items)),
        st.builds(new_plain, children, children),
        st.builds(new_slotted, children, children, st.booleans()),
        st.builds(lambda payload: NB.Rebuilt(payload), children),
        st.builds(lambda payload: NB.Registered(payload), children))


values = st.recursive(_leaves, _containers, max_leaves=8)


def _mutable_parts(value: Any) -> list[Any]:
    """Lists, dicts and attribute-holding instances inside ``value``: where a cycle can close.

    Not inside what ``__reduce__`` or a serializer rebuilds from (pickle cannot close a
    cycle through constructor arguments), nor inside sets or dict keys (hashables only).
    """
    found: list[Any] = []
    seen: set[int] = set()

    def walk(part: Any) -> None:
        if id(part) in seen:
            return
        seen.add(id(part))
        if isinstance(part, (list, dict, NB.Point, NB.Plain, NB.Slotted)):
            found.append(part)
        if isinstance(part, (list, tuple)):
            children: Any = part
        elif isinstance(part, dict):
            children = part.values()
        elif isinstance(part, (NB.Point, NB.Plain)):
            children = vars(part).values()
        elif isinstance(part, NB.Slotted):
            children = [getattr(part, s) for s in NB.Slotted.__slots__ if hasattr(part, s)]
        else:
            children = ()
        for child in list(children):
            walk(child)

    walk(value)
    return found


@st.composite
def cyclic_values(draw: st.DrawFn) -> Any:
    """A value in which one to three containers or objects point back into it."""
    root = [draw(values)]
    parts = _mutable_parts(root)
    for knot in range(draw(st.integers(1, 3))):
        holder = draw(st.sampled_from(parts))
        target = draw(st.sampled_from(parts))
        if isinstance(holder, list):
            holder.insert(draw(st.integers(0, len(holder))), target)
        elif isinstance(holder, dict):
            holder[f"loop{knot}"] = target
        elif isinstance(holder, NB.Slotted):
            holder.b = target
        else:
            setattr(holder, f"loop{knot}", target)
    return draw(st.sampled_from(parts))


def self_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


def self_dict() -> dict[str, Any]:
    mapping: dict[str, Any] = {"n": 1.5}
    mapping["me"] = mapping
    return mapping


def pointing_at_each_other() -> Any:
    first, second = NB.Plain(name="first"), NB.Plain(name="second")
    first.other, second.other = second, first
    return [first, second, NB.Point(first, (second,))]


def slotted_self() -> Any:
    obj = new_slotted(np.arange(3), None, True)
    obj.b = obj
    return {"slotted": obj}

