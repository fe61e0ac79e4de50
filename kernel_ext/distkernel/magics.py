"""The ``%%remote`` cell magic and the ``%dist`` line magic."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from distkernel import api, cellrun, runtime
from distkernel.cellvars import analyze_cell, names_to_pull, names_to_send
from distkernel.display import timeline_bundle
from distkernel.exceptions import GetTimeoutError
from distkernel.extension import lane_names
from distkernel.remote_function import RemoteFunction
from distkernel.status_view import Rendered, notice, status_view

_RUN_CELL = RemoteFunction(cellrun.run_cell, {"max_retries": 0})
_TIMINGS_MODES = ("on", "off", "summary", "full")


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@magics_class
class DistMagics(Magics):
    """Magics of one shell; ``extension`` holds the shell-wide settings (timings, quiet cells)."""

    def __init__(self, shell: Any, extension: Any) -> None:
        super().__init__(shell)
        self._extension = extension

    # -- %%remote ----------------------------------------------------------------------------

    @magic_arguments()
    @argument("-n", "--num", type=int, default=None,
              help="run the body on N workers in parallel (WORKER_INDEX, NUM_WORKERS are set)")
    @argument("--all", action="store_true", help="run the body on every worker in parallel")
    @argument("--push", default="", help="comma-separated names to send besides the ones found")
    @argument("--pull", default=None,
              help="comma-separated names to bring back (default: every name the cell assigns)")
    @argument("--no-pull", action="store_true", help="bring no names back")
    @argument("--timeout", type=float, default=None,
              help="seconds to wait for the cell; then its tasks are cancelled")
    @argument("--quiet", action="store_true", help="no streamed output and no timings")
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
        """
        args = parse_argstring(self.remote, line)
        placements = self._placements(args)
        names = analyze_cell(cell)
        namespace = self._namespace()
        try:
            send = names_to_send(names, namespace, _names(args.push))
            pull = names_to_pull(names, _names(args.pull) if args.pull is not None else None,
                                 args.no_pull)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.quiet:
            self._extension.quiet_cell()
        source = TransformerManager().transform_cell(cell)
        label = f"In[{_cell_number(self.shell)}]"
        values = {name: namespace[name] for name in send}
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
            msg = f"%%remote: the cell did not finish within {args.timeout} s; it was cancelled"
            raise UsageError(msg) from None
        return self._bring_back(results, pull, len(placements) > 1 or args.all)

    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None  # magics are registered on a shell
        return self.shell.user_ns

    def _placements(self, args: argparse.Namespace) -> list[int]:
        """Worker ids to pin the cell to (0: any worker)."""
        if args.all and args.num is not None:
            msg = "%%remote: use either -n N or --all, not both"
            raise UsageError(msg)
        if not args.all and args.num is None:
            return [0]
        backend = runtime.backend()
        with backend.lock:
            workers = sorted(w.worker_id for w in backend.scheduler.workers.values()
                             if not w.extra and not w.actor_id and w.state != "stopping")
        if args.all:
            return workers
        if args.num < 1 or args.num > len(workers):
            msg = (f"%%remote -n {args.num}: the pool has {len(workers)} workers; use 1 to "
                   f"{len(workers)}, --all, or grow it with %dist scale N")
            raise UsageError(msg)
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
        """
        parser = _dist_parser()
        words = shlex.split(line)
        if not words:
            return Rendered(f"<pre>{parser.format_help()}</pre>", parser.format_help())
        args = parser.parse_args(words)
        return getattr(self, f"_dist_{args.command}")(args)

    def _dist_status(self, args: argparse.Namespace) -> Rendered:
        return status_view(api.status())

    def _dist_init(self, args: argparse.Namespace) -> Any:
        return runtime.init(args.num, object_store_memory=args.store, address=args.address)

    def _dist_scale(self, args: argparse.Namespace) -> Rendered:
        if args.workers < 1:
            msg = f"%dist scale: the pool needs at least 1 worker, got {args.workers}"
            raise UsageError(msg)
        runtime.backend().resize(args.workers)
        return notice(f"scaling the pool to {args.workers} workers")

    def _dist_restart(self, args: argparse.Namespace) -> Any:
        """Same size (as scaled) and store as before, fresh processes and memory."""
        info = runtime.cluster_info()
        backend = runtime.current_backend()
        runtime.shutdown()
        if info is None or backend is None:
            return runtime.init()
        return runtime.init(backend.num_workers, object_store_memory=info.object_store_memory)

    def _dist_shutdown(self, args: argparse.Namespace) -> Rendered:
        runtime.shutdown()
        return notice("distkernel cluster shut down (the next API call starts a new one)")

    def _dist_timeline(self, args: argparse.Namespace) -> None:
        if args.last is not None and args.last < 1:
            msg = f"%dist timeline --last: give a number >= 1, got {args.last}"
            raise UsageError(msg)
        records = api.timeline(last=args.last)
        title = f"last {len(records)} tasks" if records else None
        lanes = lane_names(runtime.backend())
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


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as IPython usage errors, never exits."""

    def error(self, message: str) -> Any:
        text = f"{message}\n\n{self.format_usage()}"
        raise UsageError(text)

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise UsageError(message or self.format_help())


def _dist_parser() -> _Parser:
    parser = _Parser(prog="%dist", description="Manage the distkernel cluster.", add_help=False)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)
    commands.add_parser("status", help="workers, actors and the object store")
    init = commands.add_parser("init", help="start the cluster (or return the running one)")
    init.add_argument("-n", "--num", type=int, default=None, help="number of workers")
    init.add_argument("--address", default=None, help="None/local for the local engine")
    init.add_argument("--store", default=None, help="object store size, e.g. 2GB")
    scale = commands.add_parser("scale", help="grow or shrink the pool to N workers")
    scale.add_argument("workers", type=int, help="the new number of workers")
    commands.add_parser("restart", help="stop every worker and start a fresh cluster")
    commands.add_parser("shutdown", help="stop the cluster and free its memory")
    timeline = commands.add_parser("timeline", help="the task-stream chart of recent tasks")
    timeline.add_argument("--last", type=int, default=None, help="only the last N tasks")
    timings = commands.add_parser("timings", help="inline timings after each cell")
    timings.add_argument("mode", choices=_TIMINGS_MODES, help="on, off, summary or full")
    return parser
