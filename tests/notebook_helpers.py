"""Run an example notebook in a real kernel with nbclient and keep what is needed to check it.

    test process --nbclient/zmq--> kernel process (the driver) --pipes--> worker processes
                                        |
                                        +-- /dev/shm/distkernel-<kernel pid>-*

The kernel's pid and every process started under it are recorded while the notebook runs
(after each cell), so a test can check that none of them outlives the kernel and that no
segment named after one of them is left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import psutil
from nbclient import NotebookClient

from distkernel.core import config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNELS = ("distkernel", "python3")
CELL_TIMEOUT = 120  # seconds per cell; the notebooks take a few seconds in all


@dataclass
class NotebookRun:
    """An executed notebook, the kernel that ran it and the processes it started."""

    notebook: Any
    kernel_pid: int | None = None
    processes: dict[int, psutil.Process] = field(default_factory=dict)
    segments_before: frozenset[str] = frozenset()

    def code_cells(self) -> list[Any]:
        return [cell for cell in self.notebook.cells if cell.cell_type == "code"]

    def cell(self, first_line: str) -> Any:
        """The one code cell whose first line is ``first_line``."""
        found = [c for c in self.code_cells() if c.source.splitlines()[:1] == [first_line]]
        assert len(found) == 1, f"expected one cell starting {first_line!r}, found {len(found)}"
        return found[0]

    def still_running(self) -> list[psutil.Process]:
        alive = []
        for process in self.processes.values():
            try:
                # is_running() also compares the start time, so a reused pid does not count.
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                pass
        return alive

    def leftover_segments(self) -> list[str]:
        """Segments that appeared during the run, owned by the kernel or a process under it."""
        pids = {str(pid) for pid in self.processes}
        new = shm_segments() - self.segments_before
        return sorted(n for n in new if n[len(config.SEGMENT_PREFIX):].split("-")[0] in pids)


def shm_segments() -> frozenset[str]:
    try:
        names = os.listdir(config.SHM_DIR)
    except FileNotFoundError:
        return frozenset()
    return frozenset(n for n in names if n.startswith(config.SEGMENT_PREFIX))


def run_notebook(name: str, kernel_name: str, save_dir: Path) -> NotebookRun:
    """Execute ``notebooks/<name>.ipynb`` in ``kernel_name``; the result is saved in ``save_dir``.

    The kernel is shut down before this returns (nbclient does it at the end of ``execute``),
    also when a cell fails; the executed copy is written first either way, to look at.
    """
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    run = NotebookRun(notebook, segments_before=shm_segments())
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})

    def record_kernel(**_: Any) -> None:
        run.kernel_pid = client.km.provisioner.pid
        run.processes[run.kernel_pid] = psutil.Process(run.kernel_pid)

    def record_children(**_: Any) -> None:
        try:
            children = psutil.Process(run.kernel_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            run.processes.setdefault(child.pid, child)

    client.on_notebook_start = record_kernel
    client.on_cell_complete = record_children
    try:
        client.execute()
    finally:
        nbformat.write(notebook, save_dir / f"{name}-{kernel_name}.ipynb")
    return run


def output_texts(cell: Any, output_type: str | None = None) -> list[str]:
    """The text of a cell's outputs: stream text, or the ``text/plain`` of rich outputs."""
    texts = []
    for output in cell.get("outputs", []):
        if output_type is not None and output.output_type != output_type:
            continue
        if output.output_type == "stream":
            texts.append(output.text)
        elif "data" in output:
            texts.append(output.data.get("text/plain", ""))
    return texts


def cell_text(cell: Any) -> str:
    return "".join(output_texts(cell))


def notebook_text(run: NotebookRun) -> str:
    return "\n".join(cell_text(cell) for cell in run.code_cells())
