"""The example notebooks run top to bottom in a real kernel, and show what they claim.

Each notebook runs twice: in the "Python 3 (distkernel)" kernel, where the extension is already
loaded and the notebook's ``%load_ext distkernel`` cell only says so, and in the plain ``python3``
kernel, where that cell loads it (SPEC §6). The notebooks' own ``assert``s check the values;
these tests check what a reader sees in the outputs, and that the kernel leaves no worker
process and no shared-memory segment behind.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from tests.conftest import wait_until
from tests.notebook_helpers import (
    KERNELS,
    NOTEBOOKS,
    NotebookRun,
    cell_text,
    notebook_text,
    output_texts,
    run_notebook,
)

TIMINGS_CLASS = 'class="jp-Distkernel-timings"'


@pytest.fixture(params=KERNELS)
def kernel_name(request: pytest.FixtureRequest) -> str:
    return request.param


def check_common(run: NotebookRun, kernel_name: str) -> None:
    """What every example notebook shows: it loads distkernel, runs clean, shows timings."""
    cells = run.code_cells()
    assert cells[0].source.strip() == "%load_ext distkernel"
    if kernel_name == "python3":  # the cell loaded the extension: the cluster shows itself
        assert any("ClusterInfo" in text for text in output_texts(cells[0], "display_data"))
    for cell in cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {cell.source[:40]!r} raised: {errors[0].ename}"
        stderr = "".join(o.text for o in cell.outputs
                         if o.output_type == "stream" and o.name == "stderr")
        assert "Traceback" not in stderr, f"cell {cell.source[:40]!r} printed: {stderr}"
    assert cells_with_inline_timings(run), "no cell shows its task timings"


def cells_with_inline_timings(run: NotebookRun) -> list[str]:
    """First lines of the cells (besides ``%dist``) under which the timings display appears."""
    found = []
    for cell in run.code_cells():
        if cell.source.startswith("%dist"):
            continue  # %dist timeline draws the same chart on request; not an inline display
        for output in cell.outputs:
            data = output.get("data", {})
            if (output.output_type == "display_data" and TIMINGS_CLASS in data.get("text/html", "")
                    and data.get("text/plain", "").strip()):
                found.append(cell.source.splitlines()[0])
                break
    return found


def check_nothing_left(run: NotebookRun) -> None:
    assert run.kernel_pid is not None and len(run.processes) > 1, \
        "the kernel and its workers were not seen"
    assert wait_until(lambda: not run.still_running(), timeout=15), \
        f"processes left behind by the kernel: {[p.pid for p in run.still_running()]}"
    assert wait_until(lambda: not run.leftover_segments(), timeout=15), \
        f"shared-memory segments left behind: {run.leftover_segments()}"


def test_quickstart(kernel_name, tmp_path):
    run = run_notebook("quickstart", kernel_name, tmp_path)
    check_nothing_left(run)
    check_common(run, kernel_name)

    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in notebook_text(run)
    assert "in the notebook: writeable = False" in notebook_text(run)
    meter = run.cell("@dk.remote")
    assert "running mean: 6.0" in cell_text(meter), meter.get("outputs")  # all of them, if not

    remote = run.cell("%%remote")
    assert output_texts(remote, "execute_result") == ["0.9"]  # the last expression, shown
    assert "computed in worker process" in cell_text(remote)  # streamed from the worker
    assert "mean_price = 12.96, spread = 0.9" in notebook_text(run)  # names brought back

    everywhere = cell_text(run.cell("%%remote --all"))
    assert re.search(r"worker 0 of \d+, pid \d+", everywhere)
    assert "%%remote" in " ".join(cells_with_inline_timings(run))

    assert "workers" in cell_text(run.cell("%dist status"))
    timeline = run.cell("%dist timeline --last 10")
    assert any(TIMINGS_CLASS in o.data.get("text/html", "") for o in timeline.outputs)
    assert "last 10 tasks" in cell_text(timeline)


def test_serialization_journey(kernel_name, tmp_path):
    run = run_notebook("serialization", kernel_name, tmp_path)
    check_nothing_left(run)
    check_common(run, kernel_name)
    text = notebook_text(run)

    assert "99 items, 1 distinct array" in text
    assert "[42, 42, 5.0]" in text
    assert "version 1" in text and "version 2" in text

    cups = cell_text(run.cell("def three_rounds(item):"))
    assert re.search(r"dk\.put\(Spoon\(\)\): False, False, True$", cups, re.M), cups
    assert re.search(r"^\s*Spoon\(\): False, False, True$", cups, re.M), cups
    assert re.search(r"^\s*Leborn\(\): False, False, False$", cups, re.M), cups

    message = cell_text(run.cell("class A:"))
    assert message.startswith("SerializationError: ")
    for words in ("lock", "__reduce__", "register_serializer", "helper wrapper"):
        assert words in message, f"{words!r} missing from the message: {message}"
    report = cell_text(run.cell('ok, failures = dk.inspect_serializability(A(1), name="A(1)")'))
    assert "A(1)" in report and "lock" in report and "ok: False" in report

    assert "[(2,)]" in text  # fix 1: __reduce__
    assert "the task received: ('A', 2, True)" in text  # fix 2: register_serializer
    assert "after deregister_serializer: SerializationError" in text
    assert "deregistering again did nothing" in text
    assert "a bare A(1) still fails, as before" in text  # fix 3: the helper wrapper


@pytest.mark.parametrize("name", ["quickstart", "serialization"])
def test_committed_notebooks_are_clean(name):
    """Committed without outputs, for the distkernel kernel, as valid nbformat 4.5."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert (notebook.nbformat, notebook.nbformat_minor) >= (4, 5)
    assert notebook.metadata.kernelspec.name == "distkernel"
    ids = [cell.id for cell in notebook.cells]
    assert len(set(ids)) == len(ids)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:40]
