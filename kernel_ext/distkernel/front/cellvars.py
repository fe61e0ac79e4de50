"""Names a ``%%remote`` cell reads and assigns, found by static analysis.

The worker runs the cell in a fresh namespace, so the notebook variables the
cell reads must travel with it, and the names it binds come back::

    cell source --IPython transforms--> Python --ast--> CellNames(reads, assigns)
    reads  & notebook namespace  -> names_to_send   (pickled to the worker)
    assigns & --pull / --no-pull -> names_to_pull   (pickled back)

Nothing here evaluates user code. When in doubt a name counts as read: sending
one name too many costs a little pickling, missing one is a NameError remotely.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from IPython.core.inputtransformer2 import TransformerManager

_BUILTINS = frozenset(dir(builtins))
# IPython puts these in every user namespace; they describe the notebook session, not the cell.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "__builtins__",
                            "__builtin__"})
_IPYTHON_HISTORY = re.compile(r"_{1,3}|_i{1,3}|_[iod]h|_i?\d+")
_MAGIC_METHODS = frozenset({"run_line_magic", "run_cell_magic"})
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_TRY = (ast.Try, getattr(ast, "TryStar", ast.Try))
_SKIPPED_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                             tokenize.DEDENT, tokenize.ENDMARKER})


class CellSyntaxError(SyntaxError):
    """Raised when a ``%%remote`` cell is not valid Python even after IPython's transforms."""


@dataclass(frozen=True)
class CellNames:
    """What a cell needs from the notebook and what it gives back, in first-use order."""

    reads: tuple[str, ...]
    assigns: tuple[str, ...]
    last_expression: bool


class _Refs:
    """Names one scope's code uses; flow inside it is ignored (callers order statements)."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, bool]] = []  # (name, hidden from a class body)
        self.stores: list[tuple[str, bool]] = []  # (name, surely bound once the code ran)
        self.dels: list[str] = []
        self.deferred: list[str] = []    # free in a function body: resolved when it is called
        self.global_binds: list[str] = []  # bound at module level by `global` in a function
        self.declared: dict[type, list[str]] = {ast.Global: [], ast.Nonlocal: []}

    def visit(self, node: ast.AST, cond: bool = False) -> None:
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Store):  # `del x` fails unless x exists, so it reads
                self.loads.append((node.id, False))
            if isinstance(node.ctx, ast.Del):
                self.dels.append(node.id)
            elif isinstance(node.ctx, ast.Store):
                self.bind(node.id, cond)
        elif isinstance(node, ast.NamedExpr):
            self.visit(node.value, cond)
            self.bind(node.target.id, cond)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            self.function(node)
        elif isinstance(node, ast.ClassDef):
            self.klass(node)
        elif isinstance(node, _COMPREHENSIONS):
            self.comprehension(node, cond)
        elif isinstance(node, (ast.BoolOp, ast.IfExp)):
            # Only the first operand (the test) surely runs: a later walrus may bind nothing.
            ifexp = [node.test, node.body, node.orelse] if isinstance(node, ast.IfExp) else []
            for i, part in enumerate(ifexp or node.values):  # type: ignore[union-attr]
                self.visit(part, cond or i > 0)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.asname or a.name.split(".")[0] for a in node.names if a.name != "*"]
            self.stores += [(name, not cond) for name in names]
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.declared[type(node)] += node.names
        else:
            self.generic(node, cond)

    def bind(self, name: str | None, cond: bool) -> None:
        if name:
            self.stores.append((name, not cond))

    def generic(self, node: ast.AST, cond: bool) -> None:
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            self.loads.append((node.target.id, False))
        for child in ast.iter_child_nodes(node):
            self.visit(child, cond)
        if isinstance(node, ast.Call) and _is_ipython_call(node.func):
            self.magic(node)
        # except-as names and match captures are plain strings, not Name nodes.
        if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
            self.bind(node.name, cond)
        elif isinstance(node, ast.MatchMapping):
            self.bind(node.rest, cond)

    def magic(self, call: ast.Call) -> None:
        """Magic and shell arguments are strings but run (or expand ``{x}``) in the namespace."""
        skip = 1 if call.func.attr in _MAGIC_METHODS else 0  # type: ignore[attr-defined]
        for arg in call.args[skip:]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                try:
                    inner = _scan(_parse(arg.value).body)
                except (SyntaxError, ValueError):  # shell text or options: any word may be a name
                    words = re.findall(r"[^\W\d]\w*", arg.value)
                    self.loads += [(w, False) for w in words if not keyword.iskeyword(w)]
                    continue
                self.loads += [(name, False) for name in inner.reads]
                self.stores += [(name, False) for name in inner.assigns]

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        maybe = [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]
        params = [p for p in maybe if p is not None]
        header = [*getattr(node, "decorator_list", ()), *args.defaults, *args.kw_defaults,
                  *(p.annotation for p in params), getattr(node, "returns", None)]
        for part in header:
            if part is not None:
                self.visit(part)
        body = _Refs()
        for stmt in node.body if isinstance(node.body, list) else [node.body]:
            body.visit(stmt)
        glob, nonlocal_ = set(body.declared[ast.Global]), set(body.declared[ast.Nonlocal])
        bound = [name for name, _ in body.stores] + body.dels
        local = ({p.arg for p in params} | set(bound)) - glob - nonlocal_
        used = [name for name, _ in body.loads] + body.deferred
        self.deferred += [name for name in used if name not in local]
        self.global_binds += body.global_binds + [name for name in bound if name in glob]
        if not isinstance(node, ast.Lambda):
            self.bind(node.name, False)

    def klass(self, node: ast.ClassDef) -> None:
        for part in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(part)
        body = _scan(node.body, class_body=True)
        self.deferred += list(body.reads)
        self.global_binds += body.global_binds
        self.bind(node.name, False)

    def comprehension(self, node: ast.expr, cond: bool) -> None:
        generators: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.visit(generators[0].iter, cond)  # the only part evaluated in the enclosing scope
        targets, inner = _Refs(), _Refs()
        for i, gen in enumerate(generators):
            targets.visit(gen.target)
            for part in [gen.iter, *gen.ifs] if i else gen.ifs:
                inner.visit(part)
        parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]  # type: ignore[attr-defined]
        for part in parts:
            inner.visit(part)
        local = {name for name, _ in targets.stores}
        self.loads += [(name, True) for name, _ in targets.loads + inner.loads if name not in local]
        self.deferred += [name for name in inner.deferred if name not in local]
        # A walrus binds the enclosing scope, if the loop ran at all.
        self.stores += [(name, False) for name, _ in inner.stores]
        self.global_binds += inner.global_binds


class _Flow:
    """Walks a block in execution order, tracking names that are surely bound by then."""

    def __init__(self, class_body: bool = False) -> None:
        self.class_body = class_body  # class scopes are invisible to nested functions
        self.bound: set[str] = set()
        self.reads: dict[str, None] = {}
        self.assigns: dict[str, None] = {}
        self.global_binds: list[str] = []

    def block(self, body: list[ast.stmt]) -> None:
        for node in body:
            self.stmt(node)

    def stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.If):
            self.use(_refs(node.test))
            self.bound = self.branch(node.body) & self.branch(node.orelse)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            # Loops may run zero times: nothing bound inside is sure afterwards.
            head = node.test if isinstance(node, ast.While) else node.iter
            self.use(_refs(head))
            target = [] if isinstance(node, ast.While) else [_refs(node.target)]
            self.branch(node.body, *target)
            self.branch(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.use(_refs(item.context_expr, item.optional_vars))
            self.block(node.body)  # a suppressing context manager is rare enough to ignore
        elif isinstance(node, _TRY):
            self.try_(node)
        elif isinstance(node, ast.Match):
            self.match(node)
        elif isinstance(node, ast.Assign):
            self.use(_refs(node.value, *node.targets))  # the value is evaluated first
        elif isinstance(node, ast.AnnAssign) and node.value is None:
            self.use(_refs(node.annotation))  # `x: int` alone binds nothing
        else:
            self.use(_refs(node))

    def branch(self, body: list[ast.stmt], *prelude: _Refs) -> set[str]:
        """Run a block from the current state; return what it binds, then restore the state."""
        saved, self.bound = self.bound, set(self.bound)
        for refs in prelude:
            self.use(refs)
        self.block(body)
        out, self.bound = self.bound, saved
        return out

    def try_(self, node: ast.Try) -> None:
        outs = [self.branch(node.body + node.orelse)]
        for handler in node.handlers:
            refs = _refs(handler.type)
            refs.bind(handler.name, False)
            outs.append(self.branch(handler.body, refs) - {handler.name})  # deleted on exit
        self.bound = set.intersection(*outs) | self.branch(node.finalbody)

    def match(self, node: ast.Match) -> None:
        self.use(_refs(node.subject))
        outs = [self.branch(case.body, _refs(case.pattern), _refs(case.guard))
                for case in node.cases]
        last = node.cases[-1]
        irrefutable = isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None
        if not (irrefutable and last.guard is None):
            outs.append(self.bound)  # no case matched
        self.bound = set.intersection(*outs)

    def use(self, refs: _Refs) -> None:
        for name, hidden in refs.loads:
            self.read(name, visible=not (hidden and self.class_body))
        self.bound.difference_update(refs.dels)
        for name, sure in refs.stores:
            self.assigns.setdefault(name)
            if sure:
                self.bound.add(name)
        for name in refs.deferred:  # after the binds: `def f(): f()` does not read f
            self.read(name, visible=not self.class_body)
        if self.class_body:
            self.global_binds += refs.global_binds
        else:
            self.assigns.update(dict.fromkeys(refs.global_binds))

    def read(self, name: str, visible: bool) -> None:
        if not (visible and name in self.bound):
            self.reads.setdefault(name)


def _scan(body: list[ast.stmt], class_body: bool = False) -> _Flow:
    flow = _Flow(class_body)
    flow.block(body)
    return flow


def _refs(*nodes: ast.AST | None) -> _Refs:
    refs = _Refs()
    for node in nodes:
        if node is not None:
            refs.visit(node)
    return refs


def _is_ipython_call(func: ast.expr) -> bool:
    """``get_ipython().method``: what IPython's transforms turn magics and ``!`` into."""
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "get_ipython")


def _parse(source: str) -> ast.Module:
    return ast.parse(TransformerManager().transform_cell(source), "<cell>")


def _ends_quiet(source: str) -> bool:
    """IPython hides a cell's last value when its last token is ``;``."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        kept = [tok.string for tok in tokens if tok.type not in _SKIPPED_TOKENS]
    except (tokenize.TokenError, SyntaxError):
        return False
    return bool(kept) and kept[-1] == ";"


def analyze_cell(source: str) -> CellNames:
    """Names the cell needs from the notebook and names it binds, without running it."""
    try:
        tree = _parse(source)
    except (SyntaxError, ValueError) as err:
        lineno = getattr(err, "lineno", None) or 1
        lines = source.splitlines() or [""]
        text = lines[min(lineno, len(lines)) - 1]
        msg = (f"the %%remote cell is not valid Python at line {lineno}: "
               f"{getattr(err, 'msg', err)}\n    {text.strip()}\n"
               "Fix that line and run the cell again.")
        raise CellSyntaxError(msg, ("<cell>", lineno, getattr(err, "offset", None), text)) from err
    flow = _scan(tree.body)
    reads = tuple(n for n in flow.reads if n not in _BUILTINS or n in flow.assigns)
    last = bool(tree.body) and isinstance(tree.body[-1], ast.Expr) and not _ends_quiet(source)
    return CellNames(reads, tuple(flow.assigns), last)


def names_to_send(names: CellNames, namespace: Mapping[str, Any],
                  extra: Iterable[str] = ()) -> list[str]:
    """Reads that exist in the notebook, then ``--push`` names (sent even if IPython's own)."""
    extra = list(dict.fromkeys(extra))
    unknown = [name for name in extra if name not in namespace]
    if unknown:
        msg = (f"--push names not defined in the notebook: {', '.join(unknown)}; "
               "define them first or drop them from --push")
        raise ValueError(msg)
    sent = [name for name in names.reads if name in namespace and name not in _IPYTHON_NAMES
            and not _IPYTHON_HISTORY.fullmatch(name)
            and namespace[name] is not getattr(builtins, name, object())]
    return list(dict.fromkeys(sent + extra))


def names_to_pull(names: CellNames, pull: Iterable[str] | None, no_pull: bool) -> list[str]:
    """Assigned names to bring back: all public ones, the ``--pull`` ones, or none."""
    if no_pull:
        if pull is not None:
            msg = "--pull and --no-pull cannot be combined; use one of them"
            raise ValueError(msg)
        return []
    if pull is None:
        return [name for name in names.assigns if not name.startswith("_")]
    wanted = list(dict.fromkeys(pull))
    never = [name for name in wanted if name not in names.assigns]
    if never:
        msg = (f"--pull names the cell never assigns: {', '.join(never)}; "
               f"it assigns: {', '.join(names.assigns) or '(nothing)'}")
        raise ValueError(msg)
    return wanted
