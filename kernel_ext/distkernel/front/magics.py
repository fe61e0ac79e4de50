"""The ``%%remote`` cell magic and the ``%dist`` line magic.

A magic checks its whole line before it acts: a mistake raises an IPython ``UsageError``
whose message starts with the magic's name and says what to give instead, which IPython
shows as one short message rather than a traceback. So a bad option never surfaces after
the cell was already submitted to the pool. ``-h`` / ``--help`` shows the help (of a
``%dist`` subcommand too) as the cell's result and does nothing else.
"""

from __future__ import annotations

import argparse
import html
import keyword
import math
import os
import shlex
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from distkernel.api import operations as api
from distkernel.api import runtime
from distkernel.api.remote_function import RemoteFunction
from distkernel.core.exceptions import DistkernelError, GetTimeoutError
from distkernel.front import cellrun
from distkernel.front.cellvars import CellNames, analyze_cell, names_to_pull, names_to_send
from distkernel.front.status_view import Rendered, notice, status_view
from distkernel.front.timings_view import lane_names, timeline_bundle

if TYPE_CHECKING:
    from distkernel.backends.snapshot import ClusterSnapshot

_RUN_CELL = RemoteFunction(cellrun.run_cell, {"max_retries": 0})
_TIMINGS_MODES = ("on", "off", "summary", "full")
#: Workers per CPU core the magics accept: past that, processes only fight over the cores,
#: and a typo like ``%dist scale 1000000`` must not start a million processes.
WORKERS_PER_CPU = 8
#: Characters of the user's own text quoted back in a message, and of a whole message, so a
#: pasted megabyte cannot flood the cell output.
_QUOTE_LIMIT = 80
_MESSAGE_LIMIT = 600
_REMOTE_HINT = "Run %%remote -h to see its options."


# -- checking what the user typed ----------------------------------------------------------

class _HelpRequested(Exception):
    """Raised for ``-h``: carries the help text to show instead of running the command."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _quoted(text: str) -> str:
    """The user's text as a Python literal (control characters escaped), shortened."""
    if len(text) > _QUOTE_LIMIT:
        return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"
    return repr(text)


def _readable(message: str) -> str:
    """Control characters escaped (a stray ESC would restyle the output), length capped."""
    shown = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in message)
    if len(shown) > _MESSAGE_LIMIT:
        shown = f"{shown[:_MESSAGE_LIMIT]}... ({len(shown) - _MESSAGE_LIMIT} more characters)"
    return shown


def _usage_error(problem: str, *, magic: str, usage: str = "") -> UsageError:
    """A usage error whose message starts with the magic, then the problem, then usage."""
    text = f"{magic}: {_readable(problem)}"
    return UsageError(f"{text}\n\n{usage.strip()}" if usage else text)


def _help_view(text: str) -> Rendered:
    return Rendered(f"<pre>{html.escape(text)}</pre>", text)


def _words(magic: str, line: str) -> list[str]:
    """The line split as a shell would; an unclosed quote is a usage error, not a crash."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        msg = (f"{str(exc).lower()} in {_quoted(line)}; close every quote, and do not end "
               f"the line with a lone backslash")
        raise _usage_error(msg, magic=magic) from exc


def _positive_int(text: str) -> int:
    """A count typed by the user: a whole number, at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        msg = f"expected a whole number >= 1, got {_quoted(text)}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _worker_count(text: str) -> int:
    """A pool size: 1 to ``WORKERS_PER_CPU`` per CPU core of this machine."""
    number = _positive_int(text)
    limit = WORKERS_PER_CPU * (os.cpu_count() or 1)
    if number > limit:
        msg = (f"at most {limit} workers on this machine ({WORKERS_PER_CPU} per CPU core), "
               f"got {_quoted(text)}")
        raise argparse.ArgumentTypeError(msg)
    return number


def _timeout_seconds(text: str) -> float | None:
    """``--timeout``: seconds > 0, or ``inf`` for no timeout (None, as when not given).

    Checked while the line is parsed, so a bad value stops the cell before it is submitted;
    the upper bound is the longest wait the platform's locks accept.
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if seconds == math.inf:
        return None
    if not 0 < seconds <= threading.TIMEOUT_MAX:  # also refuses nan
        msg = (f"expected a number of seconds > 0 (at most {threading.TIMEOUT_MAX:.0f}), "
               f"or inf for no timeout; got {_quoted(text)}")
        raise argparse.ArgumentTypeError(msg)
    return seconds


@magics_class
class DistMagics(Magics):
    """Magics of one shell; ``extension`` holds the shell-wide settings (timings, quiet cells)."""

    def __init__(self, shell: Any, extension: Any) -> None:
        super().__init__(shell)
        self._extension = extension

    # -- %%remote ----------------------------------------------------------------------------

    @magic_arguments(name="%remote")  # the usage line then reads %%remote, as typed
    @argument("-n", "--num", type=int, default=None, metavar="N",
              help="run the body on N workers in parallel (WORKER_INDEX, NUM_WORKERS are set)")
    @argument("--all", action="store_true", help="run the body on every worker in parallel")
    @argument("--push", default="", metavar="a,b",
              help="comma-separated names to send besides the ones found")
    @argument("--pull", default=None, metavar="x,y",
              help="comma-separated names to bring back (default: every name the cell assigns)")
    @argument("--no-pull", action="store_true", help="bring no names back")
    @argument("--timeout", type=_timeout_seconds, default=None, metavar="S",
              help="seconds (> 0) to wait for the cell, then its tasks are cancelled; "
                   "inf, the default, waits as long as the cell takes")
    @argument("--quiet", action="store_true", help="no streamed output and no timings")
    @argument("-h", "--help", action="store_true", help="show this help; the cell does not run")
    @cell_magic
    def remote(self, line: str, cell: str) -> Any:
        """Run this cell on a worker; the variables it reads go along, those it sets come back.

        In [1]: data = list(range(10))
        In [2]: %%remote
           ...: total = sum(data)
           ...: total * 2
        Out[2]: 90
        In [3]: %%remote --all
           ...: print(WORKER_INDEX, NUM_WORKERS)
        In [4]: %%remote -n 2 --timeout 60 --pull part
           ...: part = sum(data[WORKER_INDEX::NUM_WORKERS])
        """
        args = _remote_arguments(line)
        if args.help:
            return _help_view(_remote_help())
        placements = self._placements(args)
        names = analyze_cell(cell)
        namespace = self._namespace()
        send, pull = _transfers(args, names, namespace)
        if args.quiet:
            self._extension.quiet_cell()
        source = TransformerManager().transform_cell(cell)
        label = f"In[{_cell_number(self.shell)}]"
        values = {name: namespace[name] for name in send}
        if (len(placements) > 1 or args.all) and all(placements):
            # one output group per worker (or node), in WORKER_INDEX order
            self._extension.reserve_output_groups(placements)
        refs = [_RUN_CELL.with_task_options(kind="cell", name=f"%%remote {label}",
                                            pin_worker=worker_id).remote(
                    source, f"<%%remote cell {label}>", values, pull, index, len(placements),
                    names.last_expression)
                for index, worker_id in enumerate(placements)]
        try:
            results = api.get(refs, timeout=args.timeout)
        except GetTimeoutError:
            for ref in refs:
                api.cancel(ref)
            msg = f"the cell did not finish within {args.timeout} s; it was cancelled"
            raise _usage_error(msg, magic="%%remote") from None
        return self._bring_back(results, pull, len(placements) > 1 or args.all)

    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None  # magics are registered on a shell
        return self.shell.user_ns

    def _placements(self, args: argparse.Namespace) -> list[int]:
        """Worker ids to pin the cell to (0: any worker)."""
        if args.all and args.num is not None:
            msg = "use either -n N or --all, not both"
            raise _usage_error(msg, magic="%%remote", usage=_REMOTE_HINT)
        if not args.all and args.num is None:
            return [0]
        snapshot = runtime.engine().snapshot()
        if snapshot.nodes:  # a Ray cluster: --all is one copy per node, -n N copies anywhere
            return _node_placements(args, snapshot)
        workers = sorted(w.worker_id for w in snapshot.workers
                         if not w.extra and not w.actor_id and w.state != "stopping")
        if args.all:
            return workers
        if args.num < 1 or args.num > len(workers):
            msg = (f"-n {args.num}: the pool has {len(workers)} worker(s); use 1 to "
                   f"{len(workers)}, --all, or grow it with %dist scale N")
            raise _usage_error(msg, magic="%%remote")
        return workers[:args.num]

    def _bring_back(self, results: list[tuple[Any, dict[str, Any]]], pull: list[str],
                    gathered: bool) -> Any:
        namespace = self._namespace()
        if not gathered:
            value, pulled = results[0]
            namespace.update(pulled)
            return None if _is_no_value(value) else value
        for name in pull:
            namespace[name] = [pulled.get(name) for _, pulled in results]
        values = [value for value, _ in results]
        if all(v is None or _is_no_value(v) for v in values):
            return None  # as a local cell ending in print(): nothing to show
        return [None if _is_no_value(v) else v for v in values]

    # -- %dist -------------------------------------------------------------------------------

    @line_magic
    def dist(self, line: str) -> Any:
        """Manage the cluster: status, init, scale, restart, shutdown, timeline, timings.

        In [1]: %dist status
        In [2]: %dist scale 4
        In [3]: %dist timeline --last 20
        In [4]: %dist timings full
        In [5]: %dist init -h
        """
        parser = _dist_parser()
        words = _words("%dist", line)
        try:
            args = parser.parse_args(words) if words else None
        except _HelpRequested as shown:
            return _help_view(shown.text)
        if args is None:
            return _help_view(parser.format_help())
        return getattr(self, f"_dist_{args.command}")(args)

    def _dist_status(self, args: argparse.Namespace) -> Rendered:
        return status_view(runtime.engine().snapshot())

    def _dist_init(self, args: argparse.Namespace) -> Any:
        """``init`` knows which sizes, counts and addresses it takes; its refusal of what
        the user typed is shown as usage, with its own wording."""
        try:
            return runtime.init(args.num, object_store_memory=args.store, address=args.address)
        except (ValueError, TypeError, OverflowError, DistkernelError) as exc:
            raise _usage_error(str(exc), magic="%dist init") from exc

    def _dist_scale(self, args: argparse.Namespace) -> Rendered:
        runtime.engine().resize(args.workers)
        return notice(f"scaling the pool to {args.workers} workers")

    def _dist_restart(self, args: argparse.Namespace) -> Any:
        """Same size (as scaled), store, resources, namespace and runtime_env as before;
        fresh processes and memory."""
        return runtime.restart()

    def _dist_shutdown(self, args: argparse.Namespace) -> Rendered:
        runtime.shutdown()
        return notice("distkernel cluster shut down (the next API call starts a new one)")

    def _dist_timeline(self, args: argparse.Namespace) -> None:
        records = api.timeline(last=args.last)
        title = f"last {len(records)} tasks" if records else None
        lanes = lane_names(runtime.engine().snapshot())
        display(timeline_bundle(records, title=title, lane_names=lanes), raw=True)

    def _dist_timings(self, args: argparse.Namespace) -> Rendered:
        self._extension.timings = "summary" if args.mode == "on" else args.mode
        return notice(f"inline task timings: {args.mode}")


def _cell_number(shell: Any) -> int:
    """The running cell's number: its input is stored in ``In`` before it runs."""
    inputs = shell.user_ns.get("In")
    return len(inputs) - 1 if isinstance(inputs, list) and inputs else shell.execution_count


def _is_no_value(value: Any) -> bool:
    return isinstance(value, str) and value == cellrun.NO_VALUE


def _remote_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = DistMagics.remote.parser  # type: ignore[attr-defined]
    return parser


def _remote_help() -> str:
    """The help IPython builds for ``%%remote?``, without its reST literal-block marker."""
    return _remote_parser().format_help().removeprefix("::\n\n")


def _node_placements(args: argparse.Namespace, snapshot: ClusterSnapshot) -> list[int]:
    """``%%remote`` on a multi-node cluster: ``--all`` pins one copy to each live node
    (WORKER_INDEX is then the node's place in that list); ``-n N`` runs N copies wherever
    Ray finds a CPU for each."""
    if args.all:
        return [node.index for node in snapshot.nodes if node.alive]
    cpus = int(dict(snapshot.resources_total).get("CPU", 0))
    if args.num < 1 or args.num > cpus:
        msg = (f"-n {args.num}: the cluster has {cpus} CPU(s) for tasks; use 1 to {cpus}, or "
               f"--all for one copy per node")
        raise _usage_error(msg, magic="%%remote")
    return [0] * args.num


def _remote_arguments(line: str) -> argparse.Namespace:
    """The ``%%remote`` line parsed; every mistake is a usage error naming ``%%remote``."""
    words = _words("%%remote", line)
    try:
        return _remote_parser().parse_args(words)
    except UsageError as exc:  # IPython's parser raises it with argparse's bare message
        raise _usage_error(str(exc), magic="%%remote", usage=_REMOTE_HINT) from None


def _names(text: str | None, option: str) -> list[str]:
    """The comma-separated variable names of ``--push`` / ``--pull``, each a Python name."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    wrong = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if wrong:
        msg = (f"{option} takes comma-separated variable names, like {option} x,y; "
               f"not a Python name: {', '.join(_quoted(n) for n in wrong)}")
        raise _usage_error(msg, magic="%%remote", usage=_REMOTE_HINT)
    return names


def _transfers(args: argparse.Namespace, names: CellNames,
               namespace: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Names to send and names to bring back, checked against the cell and the notebook."""
    push = _names(args.push, "--push")
    pull = None if args.pull is None else _names(args.pull, "--pull")
    try:
        return names_to_send(names, namespace, push), names_to_pull(names, pull, args.no_pull)
    except ValueError as exc:
        raise _usage_error(str(exc), magic="%%remote", usage=_REMOTE_HINT) from exc


class _Parser(argparse.ArgumentParser):
    """argparse for ``%dist``: mistakes become usage errors, ``-h`` the cell's result.

    Plain argparse prints and calls ``sys.exit``, which a kernel shows as a traceback.
    """

    def error(self, message: str) -> NoReturn:
        raise _usage_error(message, magic=self.prog, usage=self.format_usage())

    def print_help(self, file: Any = None) -> None:
        raise _HelpRequested(self.format_help())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Only reached by actions that would end a script (none but ``-h`` today)."""
        raise _usage_error(message or "nothing to run", magic=self.prog,
                           usage=self.format_usage())


def _with_help(parser: _Parser) -> _Parser:
    parser.add_argument("-h", "--help", action="help",
                        help="show this help; the command does not run")
    return parser


def _dist_parser() -> _Parser:
    parser = _with_help(_Parser(prog="%dist", description="Manage the distkernel cluster.",
                                add_help=False))
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    def command(name: str, summary: str) -> _Parser:
        return _with_help(commands.add_parser(name, help=summary, description=summary,
                                              add_help=False))

    command("status", "workers, actors and the object store")
    init = command("init", "start the cluster (or return the running one)")
    init.add_argument("-n", "--num", type=_worker_count, default=None, metavar="N",
                      help="number of workers (default: one per CPU core)")
    init.add_argument("--address", default=None, metavar="A",
                      help="None/local for the local engine")
    init.add_argument("--store", default=None, metavar="SIZE",
                      help="object store size, e.g. 2GB (default: a share of RAM)")
    scale = command("scale", "grow or shrink the pool to N workers")
    scale.add_argument("workers", type=_worker_count, metavar="N",
                       help=f"the new number of workers, 1 to {WORKERS_PER_CPU} per CPU core")
    command("restart", "stop every worker and start a fresh cluster")
    command("shutdown", "stop the cluster and free its memory")
    timeline = command("timeline", "the task-stream chart of recent tasks")
    timeline.add_argument("--last", type=_positive_int, default=None, metavar="N",
                          help="only the last N tasks")
    timings = command("timings", "inline timings after each cell")
    timings.add_argument("mode", choices=_TIMINGS_MODES, help="on, off, summary or full")
    return parser
