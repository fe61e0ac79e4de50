"""The side panel on Ray, in a real JupyterLab and Chromium: after ``%dist init --address
ray`` in the notebook's kernel the panel shows this machine's Ray node (in place of the
workers table), the tasks with their timings, and lanes named after nodes; after
``%dist shutdown`` and the kernel's shutdown, no process the kernel started is left.
The screenshot goes to tests/artifacts/panel_ray.png."""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile

import psutil
import pytest

from tests.browser.conftest import ARTIFACTS, Lab
from tests.browser.test_lab_panel import PANEL, open_notebook, open_panel, run_cell
from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'distkernel[ray]')")

CELLS = [
    "%dist shutdown",  # the local pool the distkernel kernel starts with
    "%dist init --address ray -n 2",
    "import time, distkernel as dk\n"
    "@dk.remote\n"
    "def nap(seconds):\n"
    "    time.sleep(seconds)\n"
    "    return seconds",
    "dk.get([nap.remote(0.2) for _ in range(6)])",
    "node = dk.status()['nodes'][0]\nprint(node['address'], node['node_id'])",
    "%dist shutdown",
]


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """This module's JupyterLab, whose kernels keep Ray's files in a folder of their own.

    Ray's ``init()`` joins the cluster named in its temp folder's ``ray_current_cluster``
    when one is there (another Ray on this machine): a folder of our own makes the
    notebook's Ray its own, and leaves any other Ray's files alone. Short, as Ray's
    socket paths inside it must stay under the Unix limit.
    """
    ray_tmp = tempfile.mkdtemp(prefix="dkray-")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_TMPDIR", ray_tmp)
            lab = Lab(tmp_path_factory.mktemp("lab_root"), tmp_path_factory.mktemp("lab_home"),
                      tmp_path_factory.mktemp("lab_log") / "lab.log")
        yield lab
        lab.stop()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def cell_text(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(
        ".jp-OutputArea").inner_text()


def wait_for_prompt(page, index: int, timeout: float = 60_000) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(
        ".jp-InputPrompt", has_text=f"[{index + 1}]").wait_for(timeout=timeout)


def alive(processes: list[psutil.Process]) -> list[str]:
    """Those still running (``is_running`` also tells a reused pid from the process)."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {process.name()}")
        except psutil.NoSuchProcess:
            pass
    return left


def widen_right_sidebar(page, pixels: int) -> None:
    """Drag the handle between the main area and the right sidebar, as a user would."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").filter(
        visible=True).last
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - pixels, y, steps=5)
    page.mouse.up()


@pytest.mark.timeout(300)
def test_panel_shows_the_ray_node_and_the_tasks(page, lab):
    server = psutil.Process(lab.process.pid)
    open_notebook(page, lab, "ray.ipynb", CELLS, "distkernel")
    open_panel(page)
    # The local engine first: its workers table, no nodes, as before.
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()
    assert page.locator(f"{PANEL} .jp-Distkernel-nodes").count() == 0
    kernels = server.children()
    assert len(kernels) == 1, kernels

    run_cell(page, 0)
    wait_for_prompt(page, 0)
    run_cell(page, 1)
    wait_for_prompt(page, 1, timeout=120_000)
    assert "Error" not in cell_text(page, 1), cell_text(page, 1)

    # On Ray the nodes take the workers table's place, and Scale is not offered.
    nodes = page.locator(f"{PANEL} .jp-Distkernel-nodes")
    nodes.wait_for(timeout=20_000)
    assert page.locator(f"{PANEL} .jp-Distkernel-workers").count() == 0
    assert "1 node, 2 CPUs" in nodes.locator("h3").inner_text()
    assert page.locator(f'{PANEL} button[data-action="scale"]').is_hidden()

    run_cell(page, 2)
    run_cell(page, 3)
    wait_for_prompt(page, 3)
    timings = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-Distkernel-timings")
    timings.wait_for()
    assert "6 tasks" in timings.inner_text()
    run_cell(page, 4)
    wait_for_prompt(page, 4)
    address, node_id = cell_text(page, 4).split()

    # This machine's node: its address and id, alive, 2 CPUs.
    row = nodes.locator('tbody tr[data-node="1"]')
    assert nodes.locator("tbody tr").count() == 1
    cells = [text.replace("\xa0", " ") for text in row.locator("td").all_inner_texts()]
    assert cells[:3] == ["1", address, "alive"], cells
    assert row.get_attribute("title") == f"node id {node_id}"
    assert re.fullmatch(r"\d+(\.\d)? / 2", cells[3]), cells
    assert re.fullmatch(r"(\d+ B|\d+\.\d [KMGT]iB) / \d+\.\d [KMGT]iB", cells[4]), cells
    assert re.fullmatch(r"\d+\.\d [KMGT]iB", cells[5]), cells

    # The tasks, with their cell and timings, and the stream's lane named after the node.
    rows = page.locator(f"{PANEL} .jp-Distkernel-tasks tbody tr", has_text="nap")
    assert wait_until(lambda: rows.filter(has_text="finished").count() == 6, timeout=20)
    first = [text.replace("\xa0", " ") for text in rows.first.locator("td").all_inner_texts()]
    assert first[0] == "nap" and first[1] == "In [4]" and first[5] == "finished", first
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", first[3]), first  # its run time
    assert "node 1" in (rows.first.get_attribute("title") or "")
    lanes = page.locator(f"{PANEL} .jp-Distkernel-laneLabel").all_text_contents()
    assert lanes == ["n1"], lanes
    widen_right_sidebar(page, 140)  # the whole node table in the picture
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel_ray.png"))

    # What the kernel started for Ray: its services and workers.
    started = kernels[0].children(recursive=True)
    assert any("raylet" in process.name() for process in started), started
    run_cell(page, 5)
    wait_for_prompt(page, 5)
    page.locator(f"{PANEL} .jp-Distkernel-message", has_text="No distkernel cluster").wait_for()
    assert wait_until(lambda: not alive(started), timeout=30, interval=0.2), \
        f"still running after %dist shutdown: {alive(started)}"
    assert kernels[0].is_running(), "the kernel ended with its cluster"

    lab.stop_kernels()
    assert wait_until(lambda: not alive([kernels[0], *started]), timeout=30, interval=0.2)
    assert wait_until(lambda: not server.children(recursive=True), timeout=30, interval=0.2), \
        f"left behind: {alive(server.children(recursive=True))}"
