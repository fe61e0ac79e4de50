"""Why a value cannot be serialized: the path from it to the member that stops it.

``serialize`` calls :func:`explain_failure` when pickling fails. We walk the
value's members, probe each with ``try_dumps`` (our own pickler, so registered
serializers count) and descend only into members that fail too; a failing
member with no failing member of its own is a culprit. Members that pickle are
never opened, which keeps the search to a few probes per level.

Path notation, after the top label (``Name(...)`` for an instance, the name of
a function or class)::

    .attr            instance attribute or slot, class attribute, partial field
    ['key']  [0]     dict value (key shown with repr), list or tuple element
    {0}              the n-th element of a set (sets have no index)
    .<closure x>     the variable ``x`` a function captured from an enclosing scope
    .<global x>      the global ``x`` that a function's code uses
    .<serializer>    what the registered serializer returned for the object
    .__reduce__()    what the object's own __reduce__ returned
"""

from __future__ import annotations

import builtins
import functools
import io
import linecache
import os
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from distkernel.core.exceptions import SerializationError, exception_text, safe_repr
from distkernel.store.pickler import PROTOCOL, registry, try_dumps

MAX_DEPTH = 20
_MAX_PROBES = 2000  # bounds the time spent on a huge value; the first culprits are enough
_MAX_CULPRITS = 10
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range)
_PLAIN_CONTAINERS = (dict, list, tuple, set, frozenset)
_CLASS_BOILERPLATE = frozenset({"__dict__", "__weakref__", "__module__", "__doc__",
                                "__qualname__", "__slots__", "__annotations__"})
_RESOURCE_WORDS = ("lock", "socket", "connection", "cursor", "pipe", "semaphore", "thread")


class FailureTuple(NamedTuple):
    """One member that cannot be serialized, as ``ray.util.inspect_serializability`` reports it."""

    obj: Any
    name: str
    parent: Any


@dataclass(eq=False)
class _Node:
    """A value on the way to a culprit; ``label`` is how this step is written in a path."""

    obj: Any
    label: str
    name: str
    error: BaseException
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path: str = (self.parent.path if self.parent else "") + self.label


# --- members: what pickling a value would pickle too ----------------------------------------

def _members(obj: Any) -> Iterator[tuple[str, str, Any]]:
    """Yield ``(path step, bare name, member)`` for each part the pickler would also pickle."""
    entry = registry.lookup(type(obj))
    if entry is not None:  # our pickler sends serializer(obj), not the object's own members
        yield ".<serializer>", "<serializer>", entry[0](obj)
    elif isinstance(obj, types.MethodType):
        yield ".__self__", "__self__", obj.__self__
        yield ".__func__", "__func__", obj.__func__
    elif isinstance(obj, types.FunctionType):
        yield from _function_members(obj)
    elif isinstance(obj, functools.partial):
        yield from ((f".{n}", n, getattr(obj, n)) for n in ("func", "args", "keywords"))
    elif isinstance(obj, type):
        yield from _class_members(obj)
    else:
        if isinstance(obj, dict):
            yield from ((f"[{safe_repr(k, 60)}]", safe_repr(k, 10_000), v)
                        for k, v in list(obj.items()))
        elif isinstance(obj, (list, tuple)):
            yield from ((f"[{i}]", f"[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, (set, frozenset)):
            yield from ((f"{{{i}}}", f"{{{i}}}", v) for i, v in enumerate(obj))
        if type(obj) not in _PLAIN_CONTAINERS:
            yield from _instance_members(obj)


def _function_members(fn: types.FunctionType) -> Iterator[tuple[str, str, Any]]:
    """Closure cells, the globals the code names (cloudpickle's own rule), and defaults."""
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            yield f".<closure {name}>", name, cell.cell_contents
        except ValueError:  # a cell not yet filled
            continue
    for name in dict.fromkeys(_code_names(fn.__code__)):
        if name in fn.__globals__:
            yield f".<global {name}>", name, fn.__globals__[name]
    if fn.__defaults__:
        yield ".__defaults__", "__defaults__", fn.__defaults__
    if fn.__kwdefaults__:
        yield ".__kwdefaults__", "__kwdefaults__", fn.__kwdefaults__


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # lambdas, comprehensions, nested defs
            yield from _code_names(const)


def _class_members(cls: type) -> Iterator[tuple[str, str, Any]]:
    for key, value in list(vars(cls).items()):
        if key in _CLASS_BOILERPLATE or isinstance(value, types.MemberDescriptorType):
            continue
        yield f".{key}", key, _unwrap(value)


def _instance_members(obj: Any) -> Iterator[tuple[str, str, Any]]:
    """Follow what pickle itself follows: a custom reduce or getstate, else __dict__ and slots."""
    cls = type(obj)
    if cls.__module__ != "builtins":  # a notebook class travels by value, class attributes too
        yield ".__class__", "__class__", cls
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        yield ".__reduce__()", "__reduce__", obj.__reduce_ex__(PROTOCOL)
        return
    if getattr(cls, "__getstate__", None) not in (None, getattr(object, "__getstate__", None)):
        yield ".__getstate__()", "__getstate__", obj.__getstate__()
        return
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        yield from ((f".{k}", k, v) for k, v in list(state.items()))
    for slot in _slot_names(cls):
        try:
            yield f".{slot}", slot, getattr(obj, slot)
        except AttributeError:  # a slot never assigned
            continue


def _slot_names(cls: type) -> Iterator[str]:
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):  # name mangling
                name = f"_{klass.__name__.lstrip('_')}{name}"
            yield name


def _unwrap(value: Any) -> Any:
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    return value.fget if isinstance(value, property) else value


def _surely_fine(obj: Any) -> bool:
    """Values we know pickle, so the search need not probe (and copy) them."""
    cls = type(obj)
    if registry.lookup(cls) is not None:
        return False
    if cls in _ATOMS or isinstance(obj, types.ModuleType):
        return True
    dtype = getattr(obj, "dtype", None)  # numpy arrays without Python objects inside
    return cls.__module__ == "numpy" and getattr(dtype, "hasobject", True) is False


# --- the search -----------------------------------------------------------------------------

def _search(obj: Any, label: str, error: BaseException,
            max_depth: int = MAX_DEPTH) -> tuple[_Node, list[_Node]]:
    """The tree of failing members under ``obj``, and its leaves (the culprits)."""
    seen: dict[int, Any] = {id(obj): obj}  # keeps probed members alive so ids stay unique
    culprits: list[_Node] = []

    def grow(node: _Node, depth: int) -> None:
        for step, name, member in _safe_members(node.obj) if depth < max_depth else ():
            if len(culprits) >= _MAX_CULPRITS or len(seen) > _MAX_PROBES:
                break
            if id(member) not in seen and not _surely_fine(member):
                seen[id(member)] = member
                member_error = try_dumps(member)
                if member_error is not None:
                    node.children.append(_Node(member, step, name, member_error, node))
                    grow(node.children[-1], depth + 1)
        if not node.children:
            culprits.append(node)

    root = _Node(obj, label, label, error)
    grow(root, 0)
    return root, culprits


def _safe_members(obj: Any) -> list[tuple[str, str, Any]]:
    try:
        return list(_members(obj))
    except Exception:  # noqa: BLE001 - a member we cannot list is skipped
        return []


# --- wording --------------------------------------------------------------------------------

def _label(obj: Any) -> str:
    if isinstance(obj, types.MethodType):
        return f"{_label(obj.__self__)}.{obj.__func__.__name__}"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
        return obj.__name__
    return f"{type(obj).__name__}(...)"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(obj: Any) -> str:
    cls = type(obj)
    name = cls.__qualname__.rsplit("<locals>.", 1)[-1]  # a class made inside a function
    return name if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{name}"


def _error_text(error: BaseException) -> str:
    return exception_text(error)


def _is_resource(obj: Any) -> bool:
    name = f"{type(obj).__module__}.{type(obj).__name__}".lower()
    return isinstance(obj, io.IOBase) or any(word in name for word in _RESOURCE_WORDS)


def _class_function(cls: type) -> types.FunctionType | None:
    """A function written in the class body: its code knows the file and its globals the cell."""
    for value in vars(cls).values():
        fn = _unwrap(value)
        if (isinstance(fn, types.FunctionType) and fn.__code__.co_filename != "<string>"
                and fn.__qualname__.startswith(cls.__qualname__ + ".")):
            return fn
    return None


def _subject(culprit: _Node) -> Any:
    """The nearest function, class or own-class instance holding the culprit: where a fix goes."""
    node = culprit.parent
    while node is not None:
        obj = node.obj
        if isinstance(obj, (types.FunctionType, type)):
            return obj
        if isinstance(obj, types.MethodType):
            return obj.__func__
        if _is_user_class(type(obj)):
            return type(obj)
        node = node.parent
    return type(culprit.obj) if _is_user_class(type(culprit.obj)) else None


def _is_user_class(cls: type) -> bool:
    return cls.__module__ == "__main__" or _class_function(cls) is not None


def _input_cells(namespace: dict[str, Any]) -> list[str]:
    """The notebook's cell inputs (IPython's ``In``), or [] outside IPython."""
    cells = namespace.get("In")
    get_ipython = getattr(builtins, "get_ipython", None)  # set while a cell runs in IPython
    shell = get_ipython() if not isinstance(cells, list) and callable(get_ipython) else None
    if shell is not None:
        cells = getattr(shell, "user_ns", {}).get("In")
    return [c if isinstance(c, str) else "" for c in cells] if isinstance(cells, list) else []


def _notebook_cell(fn: types.FunctionType | None, namespace: dict[str, Any],
                   keyword: str, name: str) -> int | None:
    """The number n of the cell In[n] that defined ``name``, or None."""
    if fn is not None:
        match = re.match(r"<ipython-input-(\d+)-", fn.__code__.co_filename)
        if match:  # IPython terminal and InteractiveShell name the cell in the file name
            return int(match.group(1))
    cells = _input_cells(namespace)
    if fn is not None and cells:  # ipykernel writes cells to temp names; match the text
        source = "".join(linecache.getlines(fn.__code__.co_filename)).strip()
        hits = [n for n in range(1, len(cells)) if source and cells[n].strip() == source]
        if hits:
            return hits[-1]
    pattern = re.compile(rf"^\s*{keyword}\s+{re.escape(name)}\b", re.MULTILINE)
    hits = [n for n in range(1, len(cells)) if pattern.search(cells[n])]
    return hits[-1] if hits else None  # the latest definition is the one in use


def _where(subject: Any) -> str:
    """Where a class or function was defined, as a notebook user would look for it."""
    is_class = isinstance(subject, type)
    fn = _class_function(subject) if is_class else subject
    module = sys.modules.get(subject.__module__)
    namespace = fn.__globals__ if fn is not None else vars(module) if module else {}
    cell = _notebook_cell(fn, namespace, "class" if is_class else "def", subject.__name__)
    if cell is not None:
        return f"defined in notebook cell In[{cell}]"
    place = "__main__" if subject.__module__ == "__main__" else f"module {subject.__module__}"
    if fn is None or not os.path.exists(fn.__code__.co_filename):
        return f"defined in {place}"
    filename, line = fn.__code__.co_filename, fn.__code__.co_firstlineno
    if is_class:  # the class statement is the nearest `class Name` above its first method
        lines = linecache.getlines(filename)[:line]
        pattern = re.compile(rf"^\s*class\s+{re.escape(subject.__name__)}\b")
        line = next((n + 1 for n in range(len(lines) - 1, -1, -1) if pattern.match(lines[n])),
                    line)
    return f"defined in {place} ({os.path.basename(filename)}:{line})"


def _fixes(subject: Any, culprit: _Node) -> list[str]:
    culprit_type = _type_name(culprit.obj)
    lines = []
    if isinstance(subject, types.FunctionType) and culprit.parent is not None:
        lines.append(f"  Simplest: create the {culprit_type} inside {subject.__name__}() "
                     "instead of using one from the notebook, so each worker makes its own.")
    if isinstance(subject, type):
        name = subject.__name__
        lines.append(f"  1. Define __reduce__ on {name} returning how to rebuild it, e.g.\n"
                     f"         def __reduce__(self):\n"
                     f"             return ({name}, (<constructor arguments>,))")
    else:
        name = culprit_type
        lines.append(f"  1. Keep the {name} in a class of your own whose __reduce__ returns "
                     "how to rebuild it (creating a new one on the worker).")
    lines.append(f"  2. Register a serializer for {name} once, before sending:\n"
                 f"         distkernel.register_serializer({name}, "
                 "serializer=lambda obj: <picklable state>,\n"
                 f"             deserializer=lambda state: <a new {name}>)")
    lines.append(f"  3. Send a helper wrapper instead of the {name}: an object whose __reduce__ "
                 f"returns ({name}, args); {name} itself stays unchanged.")
    return lines


def _message(top: str, culprits: list[_Node]) -> str:
    culprit = culprits[0]
    where = culprit.path + ": " if culprit.parent is not None else ""
    parts = [(f"Could not serialize {top}: {where}{_type_name(culprit.obj)} cannot be "
              f"serialized ({_error_text(culprit.error)}).")]
    if len(culprits) > 1:
        others = ", ".join(c.path for c in culprits[1:4]) + (", ..." if len(culprits) > 4 else "")
        parts.append(f"Also failing: {others}.")
    subject = _subject(culprit)
    if isinstance(subject, (type, types.FunctionType)):
        parts.append(f"{subject.__name__} is {_where(subject)}.")
    if _is_resource(culprit.obj):
        parts.append(f"A {_type_name(culprit.obj)} belongs to this process: locks, sockets, "
                     "open files and connections cannot travel and must be recreated on the "
                     "worker.")
    return "\n".join([" ".join(parts), "How to fix it (any one):", *_fixes(subject, culprit)])


# --- public ---------------------------------------------------------------------------------

def explain_failure(obj: Any, error: BaseException) -> SerializationError:
    """Turn a pickling failure into an error naming the member at fault and the fixes.

    The returned error carries ``.path`` (e.g. ``"A(...).inner['deep'][0]"``) and
    ``.culprit_type`` (e.g. ``"_thread.lock"``); the caller raises it ``from error``.
    """
    top = _label(obj)
    try:
        _, culprits = _search(obj, top, error)
    except Exception:  # noqa: BLE001 - the search must not fail; name the top object
        culprits = [_Node(obj, top, top, error)]
    exc = SerializationError(_message(top, culprits))
    exc.path = culprits[0].path  # type: ignore[attr-defined]
    exc.culprit_type = _type_name(culprits[0].obj)  # type: ignore[attr-defined]
    return exc


def inspect_serializability(obj: Any, name: str | None = None, depth: int = MAX_DEPTH, *,
                            file: IO[str] | None = None) -> tuple[bool, list[FailureTuple]]:
    """Print the path to every member of ``obj`` that cannot be serialized (Ray-compatible).

    Returns ``(ok, failures)``: ``ok`` is True when ``obj`` serializes; each
    failure is ``FailureTuple(obj, name, parent)`` for one innermost culprit.
    """
    out = file if file is not None else sys.stdout
    label = name or _display(obj)
    error = try_dumps(obj)
    if error is None:
        print(f"{label} can be serialized.", file=out)
        return True, []
    root, culprits = _search(obj, label, error, depth)
    print(f"{label} cannot be serialized. Path to each member that fails:", file=out)
    _print_tree(root, 1, out)
    noun = "member" if len(culprits) == 1 else "members"
    print(f"{len(culprits)} {noun} cannot be serialized: "
          f"{', '.join(c.path for c in culprits)}. Fix with __reduce__, "
          "distkernel.register_serializer, or a helper wrapper.", file=out)
    return False, [FailureTuple(c.obj, c.name, c.parent.obj if c.parent else None)
                   for c in culprits]


def _display(obj: Any) -> str:
    """The object's repr, shortened, unless it is the uninformative default one."""
    if type(obj).__repr__ is object.__repr__:
        return _label(obj)
    try:
        return _short(repr(obj))
    except Exception:  # noqa: BLE001 - the report must not fail
        return _label(obj)


def _print_tree(node: _Node, level: int, out: IO[str]) -> None:
    line = f"{'    ' * level}{node.label}  ({_type_name(node.obj)})"
    if not node.children:
        line += f"  !!! FAIL {_error_text(node.error)}"
    print(line, file=out)
    for child in node.children:
        _print_tree(child, level + 1, out)
