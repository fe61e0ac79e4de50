"""Progress under a running cell, through a real kernel: one line updated in place while
the cell's tasks run, which becomes the timings chart when the cell ends; a chart left
with running tasks is drawn again when they end."""

from __future__ import annotations

import re
import time

import pytest

from tests.kernel_session import KernelSession

DEFINE = """
import time, distkernel as dk
@dk.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


@pytest.fixture
def kernel():
    session = KernelSession("python3")
    assert session.run("%load_ext distkernel").ok
    assert session.run(DEFINE).ok
    yield session
    session.shutdown()


def displays(run, display_id: str) -> list[dict]:
    return [m for m in run.outputs if m["msg_type"] in ("display_data", "update_display_data")
            and m["content"].get("transient", {}).get("display_id") == display_id]


def test_a_running_cell_shows_progress_that_becomes_its_timings(kernel):
    run = kernel.run("dk.get([nap.remote(0.3) for _ in range(12)])", timeout=60)
    assert run.ok, run.text()
    progress = [m for m in run.outputs if "of 12 tasks" in
                m["content"].get("data", {}).get("text/plain", "")]
    assert progress, f"no progress line: {run.text()}"
    display_id = progress[0]["content"]["transient"]["display_id"]
    shown = displays(run, display_id)
    assert shown[0]["msg_type"] == "display_data"
    assert all(m["msg_type"] == "update_display_data" for m in shown[1:])
    lines = [m["content"]["data"]["text/plain"] for m in shown[:-1]]
    assert len(set(lines)) >= 2, f"the progress line never changed: {lines}"
    assert any("running" in line and "queued" in line for line in lines)
    final = shown[-1]["content"]["data"]["text/plain"]
    assert "12 tasks" in final and "of 12 tasks" not in final, final  # the timings now
    assert "jp-Distkernel-timings" in shown[-1]["content"]["data"]["text/html"]


def test_a_chart_left_running_is_drawn_again_when_its_task_ends(kernel):
    run = kernel.run("late = nap.remote(1.5)\ntime.sleep(0.4)", timeout=30)
    assert run.ok, run.text()
    charts = [m for m in run.outputs if "jp-Distkernel-timings" in m["content"].get("data", {}).get(
        "text/html", "")]
    assert charts and "running" in charts[-1]["content"]["data"]["text/plain"]
    display_id = charts[-1]["content"]["transient"]["display_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kernel.collect(0.2)
        updates = displays(run, display_id)
        if "running" not in updates[-1]["content"]["data"]["text/plain"]:
            break
    final = displays(run, display_id)[-1]
    assert final["msg_type"] == "update_display_data"
    assert "running" not in final["content"]["data"]["text/plain"], final
    assert re.search(r"wall [1-9][.\d]* s", final["content"]["data"]["text/plain"]), final


def test_a_quiet_remote_cell_shows_no_progress_either(kernel):
    run = kernel.run("%%remote --quiet\nimport time\ntime.sleep(0.8)\nvalue = 3", timeout=30)
    assert run.ok, run.text()
    assert not run.of_type("display_data", "update_display_data"), run.text()
    assert "3" in kernel.run("print(value)").text()


def test_a_cell_without_tasks_shows_nothing(kernel):
    run = kernel.run("x = 1 + 1\ntime.sleep(0.6)")
    assert run.ok
    assert not run.of_type("display_data", "update_display_data")


def test_what_a_cell_printed_comes_whole_and_above_its_chart(kernel):
    """The chart goes out from another thread than the cell's prints, which the kernel
    sends a moment later: what the cell printed before the chart was drawn is sent
    first, so a line is never cut by the chart, nor the cell's last lines put above it."""
    run = kernel.run('print("results:", dk.get([nap.remote(0) for _ in range(3)]))\n'
                     'print("and", "the", "last", "line")', timeout=60)
    assert run.ok, run.text()
    kinds = [("chart" if "jp-Distkernel-timings" in m["content"].get("data", {}).get(
        "text/html", "") else m["msg_type"]) for m in run.outputs]
    assert "chart" in kinds, run.text()
    printed = "".join(m["content"]["text"] for m in run.of_type("stream"))
    assert printed == "results: [0, 0, 0]\nand the last line\n", printed
    assert max(i for i, kind in enumerate(kinds) if kind == "stream") < kinds.index("chart"), \
        kinds
