"""The culprit-path report: which member stops a value from being serialized, and the fixes.

Classes and functions here are defined inside the tests (or exec'd into a fake
module) on purpose: cloudpickle then sends them by value, as it does for
notebook code, so their members really are pickled.
"""

from __future__ import annotations

import functools
import inspect
import io
import linecache
import sys
import threading
import time

import pytest

from distkernel.core.exceptions import SerializationError
from distkernel.store.pickler import registry, try_dumps
from distkernel.store.serializability import (
    FailureTuple,
    explain_failure,
    inspect_serializability,
)
from distkernel.store.serialization import serialize


def explain(obj: object) -> SerializationError:
    """What ``serialize`` raises for ``obj`` (and check it raises at all)."""
    with pytest.raises(SerializationError) as info:
        serialize(obj)
    assert isinstance(info.value.__cause__, Exception)
    return info.value


def fake_module_function(source: str, name: str, **global_values: object):
    """A function whose module cannot be imported, so cloudpickle pickles its globals too."""
    namespace = {"__name__": "not_an_importable_module", **global_values}
    exec(compile(source, "<fake module>", "exec"), namespace)
    return namespace[name]


class ModuleLevelHolder:
    def __init__(self) -> None:
        self.lock = threading.Lock()


# --- paths ----------------------------------------------------------------------------------

def test_lock_in_attribute_names_the_attribute():
    class A:
        def __init__(self):
            self.x = 1
            self.lock = threading.Lock()

    error = explain(A())
    assert isinstance(error, TypeError)
    assert error.path == "A(...).lock"
    assert error.culprit_type == "_thread.lock"
    assert str(error).startswith(
        "Could not serialize A(...): A(...).lock: _thread.lock cannot be serialized "
        "(TypeError: cannot pickle '_thread.lock' object).")


def test_nested_dict_and_list_are_walked_with_repr_keys_and_indexes():
    class HasLock:
        def __init__(self):
            self.fine = {"a": [1, 2]}
            self.inner = {"ok": 1, "deep": ["x", threading.Lock()]}

    error = explain(HasLock())
    assert error.path == "HasLock(...).inner['deep'][1]"


def test_closure_variable_is_named():
    lock = threading.Lock()

    def work():
        return lock

    error = explain(work)
    assert error.path == "work.<closure lock>"
    assert "create the _thread.lock inside work()" in str(error)


def test_global_referenced_by_function_is_named():
    source = "def test():\n    return [lock for _ in range(1)]\n"
    function = fake_module_function(source, "test", lock=threading.Lock(), unused=threading.Lock())
    error = explain(function)
    # found through the comprehension's nested code object; `unused` is not referenced
    assert error.path == "test.<global lock>"
    assert "Also failing" not in str(error)


def test_class_attribute_of_a_class_sent_by_value_is_named():
    class Shared:
        registry_lock = threading.Lock()

        def get(self):
            return self.registry_lock

    assert explain(Shared()).path == "Shared(...).__class__.registry_lock"
    assert explain(Shared).path == "Shared.registry_lock"


def test_slots_are_walked_including_mangled_names():
    class Slotted:
        __slots__ = ("__private", "fine")

        def __init__(self):
            self.fine = 1
            self.__private = threading.Lock()

    assert explain(Slotted()).path == "Slotted(...)._Slotted__private"


def test_cycles_terminate_and_report_the_real_culprit():
    class Node:
        pass

    a, b = Node(), Node()
    a.me, a.other, b.back = a, b, a
    b.lock = threading.RLock()
    error = explain(a)
    assert error.path == "Node(...).other.lock"
    assert error.culprit_type == "_thread.RLock"


def test_bound_method_and_partial_are_walked():
    class Service:
        def __init__(self):
            self.conn = threading.Lock()

        def run(self):
            return 1

    assert explain(Service().run).path == "Service(...).run.__self__.conn"
    part = functools.partial(print, 1, key=threading.Lock())
    assert explain(part).path == "partial(...).keywords['key']"


def test_class_with_working_reduce_is_not_blamed():
    class Rebuilt:
        def __init__(self):
            self.lock = threading.Lock()

        def __reduce__(self):
            return (Rebuilt, ())

    class Broken:
        def __init__(self):
            self.lock = threading.Lock()

    assert try_dumps(Rebuilt()) is None
    error = explain([Rebuilt(), Broken()])
    assert error.path == "list(...)[1].lock"
    assert "Also failing" not in str(error)


def test_custom_reduce_that_returns_a_lock_is_followed():
    class Leaky:
        def __reduce__(self):
            return (Leaky, (threading.Lock(),))

    assert explain(Leaky()).path == "Leaky(...).__reduce__()[1][0]"


def test_registered_class_uses_its_serializer():
    class Registered:
        def __init__(self):
            self.lock = threading.Lock()

    class Plain:
        def __init__(self):
            self.lock = threading.Lock()

    registry.register(Registered, serializer=lambda obj: None,
                      deserializer=lambda state: Registered())
    try:
        assert try_dumps(Registered()) is None
        error = explain({"reg": Registered(), "plain": Plain()})
        assert error.path == "dict(...)['plain'].lock"
        assert "Also failing" not in str(error)
    finally:
        registry.deregister(Registered)


def test_registered_serializer_that_returns_a_lock_is_blamed():
    class Registered:
        pass

    registry.register(Registered, serializer=lambda obj: threading.Lock(),
                      deserializer=lambda state: Registered())
    try:
        assert explain(Registered()).path == "Registered(...).<serializer>"
    finally:
        registry.deregister(Registered)


def test_every_culprit_is_listed():
    class Two:
        def __init__(self):
            self.first = threading.Lock()
            self.second = threading.Lock()

    error = explain(Two())
    assert error.path == "Two(...).first"
    assert "Also failing: Two(...).second." in str(error)


def test_top_object_is_named_when_nothing_inside_fails():
    error = explain(threading.Lock())
    assert error.path == "lock(...)"
    assert str(error).startswith("Could not serialize lock(...): _thread.lock cannot be")


def test_deep_and_wide_values_stay_fast():
    deep: list = [threading.Lock()]
    for _ in range(60):
        deep = [deep]
    wide = [*range(200_000), threading.Lock()]
    started = time.perf_counter()
    assert explain(deep).path.startswith("list(...)[0][0]")
    assert explain(wide).path == "list(...)[200000]"
    assert time.perf_counter() - started < 5


def test_explain_failure_never_raises_on_hostile_members():
    class Hostile:
        def __getattribute__(self, name):
            if name == "__dict__":
                raise RuntimeError("no")
            return object.__getattribute__(self, name)

        def __reduce__(self):
            raise TypeError("refuses")

    error = explain_failure(Hostile(), TypeError("refuses"))
    assert isinstance(error, SerializationError)
    assert error.path == "Hostile(...)"


# --- the message ----------------------------------------------------------------------------

def test_message_lists_the_three_fixes_named_for_the_class():
    class A:
        def __init__(self):
            self.lock = threading.Lock()

    text = str(explain(A()))
    assert "A(...).lock: _thread.lock cannot be serialized" in text
    assert "Define __reduce__ on " in text and "return (A, (<constructor arguments>,))" in text
    assert "distkernel.register_serializer(A, serializer=" in text
    assert "helper wrapper" in text and "returns (A, args)" in text
    assert "must be recreated on the worker" in text


def test_resource_note_is_left_out_for_other_culprits():
    class Gen:
        def __init__(self):
            self.items = (i for i in range(3))

    text = str(explain(Gen()))
    assert "Gen(...).items: generator cannot be serialized" in text
    assert "recreated on the worker" not in text


def test_message_names_the_defining_module_and_line():
    line = inspect.getsourcelines(ModuleLevelHolder)[1]
    text = str(explain(ModuleLevelHolder()))
    assert (f"ModuleLevelHolder is defined in module {ModuleLevelHolder.__module__} "
            f"(test_serializability.py:{line}).") in text


def test_ipykernel_style_cell_is_found_by_its_text():
    source = "import threading\nclass CellLock:\n    def __init__(self):\n        " \
             "self.lock = threading.Lock()\n"
    filename = "/tmp/ipykernel_0/4242.py"  # ipykernel's naming; the file need not exist
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__", "In": ["", "x = 1", source.rstrip(), "y = 2"]}
    try:
        exec(compile(source, filename, "exec"), namespace)
        text = str(explain(namespace["CellLock"]()))
    finally:
        linecache.cache.pop(filename, None)
    assert "CellLock is defined in notebook cell In[2]." in text


def test_cell_is_found_by_its_class_line_when_the_text_differs():
    source = "class Reused:\n    def __init__(self):\n        self.lock = threading.Lock()\n"
    cells = ["", "class Reused:\n    pass", "x = 1", "# edited since\n" + source, "y = 2"]
    namespace = {"__name__": "__main__", "In": cells, "threading": threading}
    # a fake cell whose text is not in linecache, so only the class line can find it
    exec(compile(source, "/tmp/ipykernel_0/4343.py", "exec"), namespace)
    text = str(explain(namespace["Reused"]()))
    assert "Reused is defined in notebook cell In[3]." in text  # the latest definition


@pytest.fixture
def shell():
    """A throwaway IPython shell with in-memory history, removed afterwards."""
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    hooks = sys.displayhook, sys.excepthook
    instance = interactiveshell.InteractiveShell.instance(config=config)
    try:
        yield instance
    finally:
        instance.history_manager.end_session()
        interactiveshell.InteractiveShell.clear_instance()
        sys.displayhook, sys.excepthook = hooks


def test_ipython_cell_is_named(shell):
    shell.run_cell("x = 1", store_history=True)
    shell.run_cell("import threading\nclass Guarded:\n    def __init__(self):\n"
                   "        self.lock = threading.Lock()\n", store_history=True)
    result = shell.run_cell("g = Guarded()", store_history=True)
    assert result.success
    error = explain(shell.user_ns["g"])
    assert error.path == "Guarded(...).lock"
    assert "Guarded is defined in notebook cell In[2]." in str(error)


# --- inspect_serializability ----------------------------------------------------------------

def test_inspect_prints_a_tree_to_each_culprit():
    class Outer:
        def __init__(self):
            self.inner = {"deep": [threading.Lock()]}
            self.fine = [1, 2, 3]

    value = Outer()
    out = io.StringIO()
    ok, failures = inspect_serializability(value, name="value", file=out)
    assert ok is False
    lock = value.inner["deep"][0]
    assert failures == [FailureTuple(lock, "[0]", value.inner["deep"])]
    lines = out.getvalue().splitlines()
    assert lines[0] == "value cannot be serialized. Path to each member that fails:"
    assert lines[1:5] == [
        f"    value  ({__name__}.Outer)",
        "        .inner  (dict)",
        "            ['deep']  (list)",
        ("                [0]  (_thread.lock)  !!! FAIL TypeError: cannot pickle "
         "'_thread.lock' object"),
    ]
    assert "value.inner['deep'][0]" in lines[5]
    assert ".fine" not in out.getvalue()


def test_inspect_reports_success(capsys):
    ok, failures = inspect_serializability({"a": [1, 2]})
    assert (ok, failures) == (True, [])
    assert capsys.readouterr().out == "{'a': [1, 2]} can be serialized.\n"


def test_inspect_names_closure_failures_by_variable():
    lock = threading.Lock()

    def work():
        return lock

    out = io.StringIO()
    ok, failures = inspect_serializability(work, file=out)
    assert not ok
    assert [(f.name, f.obj, f.parent) for f in failures] == [("lock", lock, work)]
    assert ".<closure lock>  (_thread.lock)  !!! FAIL" in out.getvalue()
