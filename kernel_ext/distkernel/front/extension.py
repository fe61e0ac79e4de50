"""``%load_ext distkernel``: magics, the cluster, inline timings, output routing, errors.

Loading registers the ``%%remote`` and ``%dist`` magics, starts the local
cluster (workers start in the background, so the cell returns at once), and
hooks into the shell:

- every cluster this shell starts routes task output to the submitting cell
  and tags tasks with the running cell (``CellOutput``);
- after a cell that ran tasks, their timings are shown under it;
- an interrupted cell has its tasks cancelled (SIGINT to the workers running
  them, then their workers replaced if they have not stopped within a grace
  period);
- a task's error shows the remote traceback, with notebook cell lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from IPython.display import display

from distkernel.api import runtime
from distkernel.backends.base import Engine, print_output
from distkernel.core.bounded import BoundedDict
from distkernel.core.exceptions import TaskError
from distkernel.core.timings import TaskRecord
from distkernel.front.cell_output import CellOutput
from distkernel.front.cell_progress import CellProgress
from distkernel.front.magics import DistMagics
from distkernel.front.panel import PanelChannel
from distkernel.front.timings_view import lane_names, ready_times, timings_bundle

#: Seconds an interrupted task may take to stop before its worker is replaced.
INTERRUPT_GRACE = 2.0
#: Cells whose number the panel can show for their tasks.
_CELLS_KEPT = 1000


class Extension:
    """What one loaded extension holds, so unloading can undo it."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.timings = "summary"  # on | off | summary | full
        self.output = CellOutput(getattr(shell, "kernel", None), self._tag_of, print_output)
        self._cell_numbers: BoundedDict[str, int] = BoundedDict(_CELLS_KEPT)  # tag -> In [n]
        self.panel: PanelChannel | None = None
        self.progress = CellProgress(self.output) if self.output.can_show else None

    def pre_run_cell(self, info: Any) -> None:
        """Remember which ``In [n]`` the running cell is (the panel's task table), and
        watch its tasks for the progress line under it."""
        tag = self.output.current_tag()
        if tag is not None:
            # The cell is stored in ``In`` next, at this index (post_run_cell confirms it).
            inputs = self.shell.user_ns.get("In")
            self._cell_numbers[tag] = len(inputs) if isinstance(inputs, list) else \
                self.shell.execution_count
            if self.progress is not None:
                self.progress.cell_started(tag)

    def cell_number(self, tag: str) -> int | None:
        return self._cell_numbers.get(tag)

    def _tag_of(self, task_id: str) -> str | None:
        engine = runtime.current_engine()
        return engine.cell_of_task(task_id) if engine is not None else None

    def reserve_output_groups(self, worker_ids: list[int]) -> None:
        """``%%remote -n N`` / ``--all``: the running cell's output groups, one per worker in
        WORKER_INDEX order, each titled with its index and its worker."""
        tag = self.output.current_tag()
        if tag is not None:
            self.output.reserve(tag, {worker_id: f"WORKER_INDEX {index} · worker {worker_id}"
                                      for index, worker_id in enumerate(worker_ids)})

    def quiet_cell(self) -> None:
        """No streamed output and no timings for the running cell."""
        tag = self.output.current_tag()
        if tag is not None:
            self.output.mute(tag)

    def attach(self, engine: Engine) -> None:
        """Start hook: each new cluster routes output and tags tasks through this shell."""
        engine.route_output(self.output.current_tag, self.output.write)

    # -- shell events ---------------------------------------------------------------------

    def post_run_cell(self, result: Any) -> None:
        tag = self.output.current_tag()
        if tag is None:
            return
        if isinstance(getattr(result, "execution_count", None), int):
            self._cell_numbers[tag] = result.execution_count
        engine = runtime.current_engine()
        if engine is None:  # no cluster (any more): nothing to draw, stop watching the cell
            if self.progress is not None:
                self.progress.cell_ended(tag, [], lambda records: None)
            return
        self.output.flush(tag)
        if isinstance(result.error_in_exec, KeyboardInterrupt):
            self.cancel_cell(engine, tag)
        records = engine.timeline(cell=tag)
        draw = self._timings_drawer(engine, muted=self.output.muted(tag))
        if self.progress is not None and self.progress.cell_ended(tag, records, draw):
            return  # its progress line became the timings (drawn again as late tasks end)
        bundle = draw(records) if records else None
        if bundle is not None:
            display(bundle, raw=True)

    def _timings_drawer(self, engine: Engine, *, muted: bool) -> Callable[
            [Sequence[TaskRecord]], dict[str, str] | None]:
        """How a cell's timings are drawn, now and when its late tasks end."""
        if self.timings == "off" or muted:
            return lambda records: None
        mode: Literal["summary", "full"] = "full" if self.timings == "full" else "summary"

        def draw(records: Sequence[TaskRecord]) -> dict[str, str] | None:
            if not records:
                return None
            snapshot = engine.snapshot()
            return timings_bundle(records, mode=mode, lane_names=lane_names(snapshot),
                                  ready_at=ready_times(snapshot))

        return draw

    def cancel_cell(self, engine: Engine, tag: str) -> None:
        """Interrupt the cell's tasks now; replace the workers of those that do not stop."""
        if not engine.cancel_cell(tag):
            return

        def escalate() -> None:
            if not engine.closing:
                engine.cancel_cell(tag, force=True)

        timer = threading.Timer(INTERRUPT_GRACE, escalate)
        timer.daemon = True
        timer.start()

    def show_task_error(self, shell: Any, etype: type, evalue: BaseException, tb: Any,
                        tb_offset: int | None = None) -> list[str]:
        """Custom exception handler: the remote traceback, as if the error were local."""
        remote = getattr(evalue, "remote_traceback", "") or ""
        cause = getattr(evalue, "cause", None)
        headline = f"{type(cause).__name__}: {cause}" if cause is not None else str(evalue)
        lines = [f"Remote error in {getattr(evalue, 'task_name', 'a task')}:"]
        lines.extend(with_cell_sources(remote, shell).rstrip("\n").splitlines())
        if not remote:
            lines.append(headline)
        shell._showtraceback(type(cause) if cause is not None else etype, evalue, lines)
        return lines


_CODE_LINE = re.compile(r'^(\s*)File "([^"]+)", line (\d+)(, in .*)?$')


def with_cell_sources(traceback_text: str, shell: Any) -> str:
    """Name notebook cells (``Cell In[5]``) and add their source lines, which a worker lacks."""
    import linecache

    compiler = getattr(shell, "compile", None)
    out: list[str] = []
    lines = traceback_text.splitlines()
    for index, line in enumerate(lines):
        match = _CODE_LINE.match(line)
        if match is None:
            out.append(line)
            continue
        indent, filename, lineno, rest = match.groups()
        label = compiler.format_code_name(filename) if compiler is not None else None
        where = f"{label[0]} {label[1]}" if label else f'File "{filename}"'
        out.append(f"{indent}{where}, line {lineno}{rest or ''}")
        source = linecache.getline(filename, int(lineno)).strip()
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if source and following != source:
            out.append(f"{indent}    {source}")
    return "\n".join(out) + "\n"


_loaded: Extension | None = None


def load(shell: Any) -> None:
    """``%load_ext distkernel``."""
    global _loaded
    if _loaded is not None:
        unload(shell)
    extension = Extension(shell)
    _loaded = extension
    shell.register_magics(DistMagics(shell, extension))
    shell.events.register("pre_run_cell", extension.pre_run_cell)
    shell.events.register("post_run_cell", extension.post_run_cell)
    extension.panel = _open_panel_channel(extension)
    shell.set_custom_exc((TaskError,), extension.show_task_error)
    runtime.add_start_hook(extension.attach)
    info = runtime.init() if not runtime.is_initialized() else runtime.cluster_info()
    extension.attach(runtime.engine())
    display(info)


def _open_panel_channel(extension: Extension) -> PanelChannel | None:
    """The side panel's comm target, in a kernel (a plain IPython has no panel)."""
    if getattr(extension.shell, "kernel", None) is None:
        return None
    from comm import get_comm_manager

    channel = PanelChannel(get_comm_manager(), extension.cell_number)
    channel.register()
    return channel


def unload(shell: Any) -> None:
    """``%unload_ext distkernel``: shut the cluster down and undo the hooks."""
    global _loaded
    extension, _loaded = _loaded, None
    if extension is None:
        return
    runtime.remove_start_hook(extension.attach)
    if extension.panel is not None:
        extension.panel.close()
    if extension.progress is not None:
        extension.progress.stop()
    for event, callback in (("pre_run_cell", extension.pre_run_cell),
                            ("post_run_cell", extension.post_run_cell)):
        try:
            shell.events.unregister(event, callback)
        except ValueError:
            pass
    shell.set_custom_exc((), None)
    runtime.shutdown()
