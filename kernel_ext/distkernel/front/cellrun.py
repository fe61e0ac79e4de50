"""Running a ``%%remote`` cell body inside a worker.

The driver sends the cell's source, the notebook values it reads and the
names to bring back; here the body runs in a fresh namespace, compiled under
a file name that names the cell, with its lines in ``linecache`` so a remote
traceback shows the cell's own line numbers and text. Like a notebook cell,
a final expression is evaluated and returned for display.
"""

from __future__ import annotations

import ast
import linecache
from typing import Any

#: Marks "the cell has no value to display" (None is a value a cell can show... or not).
NO_VALUE = "__distkernel_no_value__"


def _no_ipython(*_args: Any, **_kwargs: Any) -> Any:
    msg = ("IPython magics and shell commands (%..., !...) do not run inside %%remote cells: "
           "the cell runs in a worker process without IPython. Move them to a local cell.")
    raise RuntimeError(msg)


def run_cell(source: str, filename: str, values: dict[str, Any], pull: list[str],
             worker_index: int, num_workers: int, show_last: bool) -> tuple[Any, dict[str, Any]]:
    """Run ``source``; return (value of the last expression or NO_VALUE, pulled names)."""
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__,
                                 "get_ipython": _no_ipython, **values,
                                 "WORKER_INDEX": worker_index, "NUM_WORKERS": num_workers}
    tree = ast.parse(source, filename=filename)
    last = None
    final = tree.body[-1] if tree.body else None
    if show_last and isinstance(final, ast.Expr):
        tree.body.pop()
        last = ast.Expression(final.value)
    exec(compile(tree, filename, "exec"), namespace)
    value: Any = NO_VALUE
    if last is not None:
        value = eval(compile(last, filename, "eval"), namespace)
    pulled = {name: namespace[name] for name in pull if name in namespace}
    return value, pulled
