"""Static analysis of ``%%remote`` cells: what is shipped to the worker and what comes back.

Each row of ``CELLS`` is a cell as a user would type it, with the exact reads
(in first-use order), assigns (in first-bind order) and whether its last value
is displayed. Reads are deliberately conservative: a name that may be unbound
when it is used counts as read.
"""

from __future__ import annotations

import builtins
import dataclasses
import math

import pytest

from distkernel.front.cellvars import (
    CellNames,
    CellSyntaxError,
    analyze_cell,
    names_to_pull,
    names_to_send,
)


def cell(source, reads, assigns, last=False, *, id):
    return pytest.param(source, tuple(reads), tuple(assigns), last, id=id)


CELLS = [
    # --- plain statements -------------------------------------------------------------------
    cell("y = x + 1", ["x"], ["y"], id="read-then-assign"),
    cell("x = 1\ny = x", [], ["x", "y"], id="assigned-before-read"),
    cell("print(x)\nx = 1", ["x"], ["x"], id="read-before-assign"),
    cell("c = b + a\nd = a + c", ["b", "a"], ["c", "d"], id="first-use-order"),
    cell("a[i] = f(x)", ["f", "x", "a", "i"], [], id="value-before-subscript-target"),
    cell("a.b.c = d.e", ["d", "a"], [], id="attribute-reads-base-only"),
    cell("a, *b = c\nd = e = b", ["c"], ["a", "b", "d", "e"], id="unpacking-and-chained"),
    cell("x += 1", ["x"], ["x"], id="augmented-reads-and-assigns"),
    cell("x = 0\nx += 1", [], ["x"], id="augmented-after-bind"),
    cell("x: int = y", ["y"], ["x"], id="annotated-assignment"),
    cell("x: int\nx", ["x"], [], True, id="bare-annotation-binds-nothing"),
    cell("del x", ["x"], [], id="del-needs-the-name"),
    cell("x = 1\ndel x\nx", ["x"], ["x"], True, id="del-unbinds"),
    cell("print(len(range(n)))", ["n"], [], True, id="builtins-never-read"),
    cell("list = [1]\nlist", [], ["list"], True, id="builtin-rebound-before-use"),
    cell("id += 1", ["id"], ["id"], id="builtin-name-the-cell-assigns-is-read"),
    cell("s = f'{x!r:>{width}}'", ["x", "width"], ["s"], id="f-string"),
    cell("g(*args, **{k: v}, key=val)", ["g", "args", "k", "v", "val"], [], True,
         id="call-arguments"),
    cell("await asyncio.sleep(t)", ["asyncio", "t"], [], True, id="top-level-await"),
    # --- imports ------------------------------------------------------------------------------
    cell("import numpy as np\nimport os.path\nfrom collections import OrderedDict as OD, deque\n"
         "np.zeros(3)", [], ["np", "os", "OD", "deque"], True, id="imports-bind"),
    cell("from math import *\nsqrt(2)", ["sqrt"], [], True, id="star-import-binds-nothing-known"),
    # --- functions, lambdas, classes ------------------------------------------------------------
    cell("def f():\n    return x\nf()", ["x"], ["f"], True, id="function-free-global"),
    cell("x = 1\ndef f():\n    return x", [], ["x", "f"], id="global-bound-before-def"),
    cell("def f():\n    return x\nx = 1\nf()", ["x"], ["f", "x"], True,
         id="global-bound-after-def-still-read"),
    cell("def f(a, /, b, *args, c=d, **kw):\n    return a + b + args[0] + c + kw['k']",
         ["d"], ["f"], id="parameters-are-local-defaults-are-read"),
    cell("@deco\ndef f(a: T = v) -> R:\n    pass", ["deco", "v", "T", "R"], ["f"],
         id="decorator-default-annotations"),
    cell("def f():\n    y = 1\n    return y", [], ["f"], id="function-locals"),
    cell("def f():\n    print(y)\n    y = 1", [], ["f"], id="function-local-even-if-used-first"),
    cell("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", [], ["fact"],
         id="recursion-is-not-a-read"),
    cell("def bump():\n    global count\n    count += 1", ["count"], ["bump", "count"],
         id="global-declaration-read-and-assign"),
    cell("def reset():\n    global total\n    total = 0", [], ["reset", "total"],
         id="global-declaration-assign-only"),
    cell("def outer():\n    n = 0\n    def inner():\n        nonlocal n\n        n += step\n"
         "    return inner", ["step"], ["outer"], id="nonlocal-is-not-global"),
    cell("def outer(a):\n    def inner():\n        return a + b\n    return inner",
         ["b"], ["outer"], id="closure-over-parameter"),
    cell("def f(xs):\n    return [x * scale for x in xs]", ["scale"], ["f"],
         id="comprehension-inside-function"),
    cell("f = lambda q, r=default: q + r + w", ["default", "w"], ["f"], id="lambda"),
    cell("class A(Base):\n    n = 1\n    m = n + k\n    def get(self):\n        return n",
         ["Base", "k", "n"], ["A"], id="class-body-and-method"),
    cell("class A:\n    n = 2\n    xs = [n for _ in range(3)]", ["n"], ["A"],
         id="class-scope-invisible-to-comprehension"),
    cell("class A:\n    xs = [1]\n    ys = [i for i in xs]", [], ["A"],
         id="class-scope-visible-to-first-iterable"),
    cell("class Node:\n    def copy(self):\n        return Node()", [], ["Node"],
         id="class-refers-to-itself"),
    cell("def f():\n    class Inner:\n        z = w\n    return Inner", ["w"], ["f"],
         id="class-inside-function"),
    # --- comprehensions and walrus -----------------------------------------------------------
    cell("[i * k for i in xs]", ["xs", "k"], [], True, id="comprehension-variable-is-local"),
    cell("[i for i in xs]\ni", ["xs", "i"], [], True, id="comprehension-variable-does-not-leak"),
    cell("{k: v for row in rows for k, v in row.items() if v > limit}", ["rows", "limit"], [],
         True, id="nested-generators"),
    cell("x = [x + y for y in ys]", ["ys", "x"], ["x"], id="comprehension-reads-old-value"),
    cell("total = sum(v for v in vals)\ns = {w for w in words}", ["vals", "words"],
         ["total", "s"], id="generator-and-set"),
    cell("if (m := pattern.match(s)):\n    print(m.group())\nm", ["pattern", "s"], ["m"], True,
         id="walrus-in-if-test"),
    cell("ok or (b := 1)\nb", ["ok", "b"], ["b"], True, id="walrus-in-or-is-conditional"),
    cell("y = (z if c else (w := 0))\nw", ["c", "z", "w"], ["w", "y"], True,
         id="walrus-in-ifexp-is-conditional"),
    cell("[last := v for v in vals]\nlast", ["vals", "last"], ["last"], True,
         id="walrus-in-comprehension-binds-cell"),
    cell("while (chunk := read()):\n    pass\nchunk", ["read"], ["chunk"], True,
         id="walrus-in-while-test"),
    # --- control flow ----------------------------------------------------------------------
    cell("if c:\n    y = 1\nprint(y)", ["c", "y"], ["y"], True, id="if-without-else"),
    cell("if c:\n    y = 1\nelse:\n    y = 2\nprint(y)", ["c"], ["y"], True, id="if-else-both"),
    cell("if a:\n    y = 1\nelif b:\n    y = 2\ny", ["a", "b", "y"], ["y"], True,
         id="elif-without-else"),
    cell("for i in range(n):\n    t = i\nprint(i, t)", ["n", "i", "t"], ["i", "t"], True,
         id="for-may-run-zero-times"),
    cell("for i in items:\n    print(i)", ["items"], ["i"], id="for-target-bound-in-body"),
    cell("for i in xs:\n    break\nelse:\n    found = False\nfound", ["xs", "found"],
         ["i", "found"], True, id="for-else"),
    cell("while n > 0:\n    n -= 1", ["n"], ["n"], id="while"),
    cell("try:\n    z = f()\nexcept ValueError as e:\n    print(e)\n    z = 0\nz", ["f"],
         ["z", "e"], True, id="try-both-paths-bind"),
    cell("try:\n    z = f()\nexcept KeyError:\n    pass\nz", ["f", "z"], ["z"], True,
         id="try-handler-does-not-bind"),
    cell("try:\n    a = 1\nexcept OSError:\n    a = 2\nelse:\n    b = a\nfinally:\n    c = 3\n"
         "print(a, b, c)", ["b"], ["a", "b", "c"], True, id="try-else-finally"),
    cell("try:\n    pass\nexcept Exception as err:\n    pass\nerr", ["err"], ["err"], True,
         id="except-name-deleted-after-handler"),
    cell("try:\n    err = None\nexcept Exception as err:\n    pass\nerr", ["err"], ["err"], True,
         id="except-name-deleted-even-if-body-bound-it"),
    cell("with open(path) as fh:\n    data = fh.read()\ndata", ["path"], ["fh", "data"], True,
         id="with-as"),
    cell("async with lock:\n    async for item in stream:\n        out.append(item)",
         ["lock", "stream", "out"], ["item"], id="async-with-and-for"),
    cell("match cmd:\n    case [x, *rest]:\n        pass\n    case {'k': v, **kw}:\n        pass\n"
         "    case Point(x=0) as p:\n        pass\nprint(x)", ["cmd", "Point", "x"],
         ["x", "rest", "v", "kw", "p"], True, id="match-captures"),
    cell("match c:\n    case Color.RED:\n        r = 1", ["c", "Color"], ["r"],
         id="match-value-pattern-reads"),
    cell("match v:\n    case 0:\n        kind = 'zero'\n    case _:\n        kind = 'other'\nkind",
         ["v"], ["kind"], True, id="match-irrefutable-last-case"),
    cell("match v:\n    case 0:\n        kind = 'zero'\nkind", ["v", "kind"], ["kind"], True,
         id="match-may-match-nothing"),
    cell("match v:\n    case 0:\n        kind = 'zero'\n    case other if other:\n"
         "        kind = 'other'\nkind", ["v", "kind"], ["kind", "other"], True,
         id="match-guarded-capture-is-refutable"),
    cell("match v:\n    case n if n > lo:\n        pass", ["v", "lo"], ["n"], id="match-guard"),
    # --- last expression ----------------------------------------------------------------------
    cell("", [], [], id="empty"),
    cell("# only a comment\n", [], [], id="only-comment"),
    cell("x", ["x"], [], True, id="expression-shown"),
    cell("x  # shown\n\n", ["x"], [], True, id="expression-then-comment"),
    cell("x = 1\nx;", [], ["x"], id="semicolon-suppresses"),
    cell("x;  # quiet", ["x"], [], id="semicolon-then-comment"),
    cell("for i in r:\n    i", ["r"], ["i"], id="ends-with-loop"),
    # --- IPython syntax ---------------------------------------------------------------------
    cell("%time y = f(x)", ["get_ipython", "f", "x"], ["y"], True, id="line-magic-code"),
    cell("files = !ls {folder}", ["get_ipython", "ls", "folder"], ["files"], id="shell-capture"),
    cell("obj?", ["get_ipython", "obj"], [], True, id="help"),
    cell("%%time\nz = f(y)\n", ["get_ipython", "f", "y"], ["z"], True, id="cell-magic-body"),
    cell("for i in r:\n    %time g(i)", ["r", "get_ipython", "g"], ["i"], id="magic-in-loop"),
    cell("%matplotlib inline\nplot(a)", ["get_ipython", "inline", "plot", "a"], [], True,
         id="magic-words-are-candidates"),
]


@pytest.mark.parametrize(("source", "reads", "assigns", "last"), CELLS)
def test_analyze_cell(source, reads, assigns, last):
    assert analyze_cell(source) == CellNames(reads, assigns, last)


def test_cell_names_is_frozen():
    names = analyze_cell("x = 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        names.reads = ("y",)


def test_analysis_does_not_run_the_cell(tmp_path):
    target = tmp_path / "created"
    analyze_cell(f"open({str(target)!r}, 'w').write('ran')\nimport this_module_does_not_exist")
    assert not target.exists()


@pytest.mark.parametrize(("source", "lineno", "text"), [
    ("a = 1\nb = = 2\nc = 3", 2, "b = = 2"),
    ("%time a\n!ls\nif x\n    pass", 3, "if x"),
    ("x = 1\n    y = 2", 2, "y = 2"),
])
def test_syntax_error_names_the_users_line(source, lineno, text):
    with pytest.raises(CellSyntaxError) as info:
        analyze_cell(source)
    err = info.value
    assert isinstance(err, SyntaxError)
    assert err.lineno == lineno
    assert f"line {lineno}" in str(err)
    assert text in str(err)
    assert isinstance(err.__cause__, SyntaxError)


NAMESPACE = {
    "x": 1, "df": object(), "np": math, "id": 5, "pushed": [1],
    "In": [""], "Out": {}, "get_ipython": lambda: None, "exit": None, "quit": None,
    "_": 1, "__": 2, "___": 3, "_i": "", "_ii": "", "_iii": "", "_i7": "", "_7": 7,
    "_oh": {}, "_dh": [], "_ih": [], "__builtins__": builtins,
    "len": builtins.len,  # the builtin itself, seen through a namespace
}


@pytest.mark.parametrize(("source", "extra", "expected"), [
    ("y = x + np.sqrt(df) + missing", (), ["x", "np", "df"]),
    ("y = _ + __ + ___ + _i + _ii + _iii + _i7 + _7 + In[0] + Out + _oh + _dh + _ih", (), []),
    ("%time y = x", (), ["x"]),
    ("exit(quit)", (), []),
    ("len = len(x)", (), ["x"]),
    ("id += 1", (), ["id"]),
    ("y = x", ["pushed", "x", "pushed"], ["x", "pushed"]),
    ("y = 1", ["_"], ["_"]),
])
def test_names_to_send(source, extra, expected):
    assert names_to_send(analyze_cell(source), NAMESPACE, extra) == expected


def test_builtin_object_under_its_own_name_is_not_sent():
    names = analyze_cell("len = len(x)")
    assert names.reads == ("len", "x")
    assert names_to_send(names, {"len": builtins.len, "x": 1}) == ["x"]
    assert names_to_send(names, {"len": 3, "x": 1}) == ["len", "x"]


def test_unknown_push_names_are_listed():
    with pytest.raises(ValueError, match=r"--push .*nope, gone") as info:
        names_to_send(analyze_cell("y = x"), NAMESPACE, ["nope", "x", "gone"])
    assert "x" not in str(info.value).split(":", 1)[1].split(";")[0].split(", ")


@pytest.mark.parametrize(("pull", "no_pull", "expected"), [
    (None, False, ["a", "b", "f"]),
    (["b"], False, ["b"]),
    (["_tmp", "a", "_tmp"], False, ["_tmp", "a"]),
    ([], False, []),
    (None, True, []),
])
def test_names_to_pull(pull, no_pull, expected):
    names = analyze_cell("a = 1\n_tmp = 2\nb = a\ndef f():\n    pass")
    assert names_to_pull(names, pull, no_pull) == expected


def test_pull_of_names_never_assigned():
    names = analyze_cell("a = 1\nb = x")
    with pytest.raises(ValueError, match=r"never assigns: zz, yy; it assigns: a, b"):
        names_to_pull(names, ["a", "zz", "yy"], no_pull=False)


def test_pull_and_no_pull_conflict():
    with pytest.raises(ValueError, match="--pull and --no-pull"):
        names_to_pull(analyze_cell("a = 1"), ["a"], no_pull=True)
