"""The side panel in a real JupyterLab, in a real Chromium: it follows the notebook's
kernel, shows workers, the store and running tasks changing while a cell runs, and its
scale and restart act while that cell still runs. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re

from tests.browser.conftest import ARTIFACTS, write_notebook
from tests.conftest import wait_until

DEFINE = """import time, numpy as np, distkernel as dk
@dk.remote
def nap(seconds):
    time.sleep(seconds)
    return np.ones(200_000)
"""
LONG_CELL = "results = dk.get([nap.remote(0.5) for _ in range(40)])\nlen(results)"

PANEL = "#distkernel-panel"


def open_notebook(page, lab, name: str, cells: list[str], kernel: str) -> None:
    write_notebook(lab.root / name, cells, kernel)
    # A workspace of its own: JupyterLab would otherwise reopen the other tests' notebooks.
    page.goto(lab.url(f"lab/workspaces/{name.split('.')[0]}/tree/{name}"))
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').filter(
        visible=True).first.wait_for(timeout=90_000)


def run_cell(page, index: int) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")


def prompt_of(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(
        ".jp-InputPrompt").first.inner_text()


def counter(page, key: str) -> int:
    text = page.locator(f'{PANEL} [data-counter="{key}"] .jp-Distkernel-counterValue')
    return int(text.inner_text())


def open_panel(page) -> None:
    page.click('li[data-id="distkernel-panel"]')
    page.wait_for_selector(PANEL, state="visible")


def test_panel_is_live_and_acts_while_a_cell_runs(page, lab):
    open_notebook(page, lab, "live.ipynb", [DEFINE, LONG_CELL], "distkernel")
    open_panel(page)
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()
    assert "distkernel" in page.locator(f"{PANEL} .jp-Distkernel-kernel").inner_text()

    run_cell(page, 0)
    run_cell(page, 1)
    page.locator(f"{PANEL} .jp-Distkernel-state-busy").first.wait_for()
    page.locator(f"{PANEL} .jp-Distkernel-task", has_text="nap").first.wait_for()
    assert "*" in prompt_of(page, 1), "the long cell ended before the panel showed it"
    first = counter(page, "finished")
    assert wait_until(lambda: counter(page, "finished") >= first + 4, timeout=15)
    # The cell's own progress line, updated in place while it runs.
    progress = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-Distkernel-progress")
    progress.wait_for()
    seen = {progress.inner_text()}
    assert wait_until(lambda: seen.add(progress.inner_text()) or len(seen) >= 2, timeout=10)
    assert all("of 40 tasks" in text for text in seen), seen
    assert progress.count() == 1
    store_text = page.locator(f"{PANEL} .jp-Distkernel-storeText").inner_text()
    assert re.search(r"\d+ objects", store_text)
    page.screenshot(path=str(ARTIFACTS.joinpath("panel_while_running.png")))

    # Scale while the cell still runs: the pool grows at once.
    page.fill(f"{PANEL} .jp-Distkernel-scaleInput", "3")
    page.click(f'{PANEL} button[data-action="scale"]')
    page.locator(f"{PANEL} h3", has_text="pool of 3").wait_for(timeout=10_000)
    assert "*" in prompt_of(page, 1), "scaling waited for the cell to end"
    rows = page.locator(f"{PANEL} .jp-Distkernel-workers tbody tr")
    assert wait_until(lambda: rows.count() >= 3, timeout=10)

    page.locator(".jp-Notebook .jp-Cell").nth(1).locator(
        ".jp-InputPrompt", has_text="[2]").wait_for(timeout=60_000)
    # The progress line became the cell's timings, with a legend.
    chart = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-Distkernel-timings")
    chart.wait_for()
    assert progress.count() == 0
    assert "40 tasks" in chart.inner_text() and "nap" in chart.locator(
        ".jp-Distkernel-legend").inner_text()
    done = page.locator(f"{PANEL} .jp-Distkernel-tasks tbody tr")
    assert done.count() > 0
    link = page.locator(f"{PANEL} .jp-Distkernel-cellLink").first
    assert link.inner_text().replace("\xa0", " ") == "In [2]"
    # A finished task's row shows the bytes it returned (the panel may lag the cell a bit).
    page.locator(f"{PANEL} .jp-Distkernel-tasks tbody tr", has_text="MiB").first.wait_for()
    page.locator(".jp-Notebook .jp-Cell").nth(0).click()  # away from the tasks' cell
    link.click()  # the task's cell becomes the active one
    page.locator(".jp-Notebook .jp-Cell.jp-mod-active", has_text="results = dk.get").wait_for()
    assert page.locator(f"{PANEL} .jp-Distkernel-legendItem", has_text="nap").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel.png"))


def test_cancel_and_restart_from_the_panel_while_a_cell_runs(page, lab):
    open_notebook(page, lab, "restart.ipynb",
                  [DEFINE, "dk.get([nap.remote(30) for _ in range(2)])"], "distkernel")
    open_panel(page)
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()
    run_cell(page, 0)
    run_cell(page, 1)
    page.locator(f"{PANEL} .jp-Distkernel-task", has_text="nap").first.wait_for()
    # Cancel one of the two running tasks from its worker's row.
    page.locator(f'{PANEL} button[data-action="cancel"]').first.click()
    page.locator(f"{PANEL} .jp-Distkernel-status-cancelled").first.wait_for(timeout=10_000)
    pids_before = page.locator(f"{PANEL} .jp-Distkernel-workers").inner_text()
    page.click(f'{PANEL} button[data-action="restart"]')
    page.locator(f"{PANEL} .jp-Distkernel-notice", has_text="restarted").wait_for(timeout=20_000)
    # The running cell's get fails (its cluster was replaced) long before its 30 s are up.
    page.locator(".jp-Notebook .jp-Cell").nth(1).locator(
        ".jp-InputPrompt", has_text="[2]").wait_for(timeout=20_000)
    workers = page.locator(f"{PANEL} .jp-Distkernel-workers")
    assert "nap" in pids_before
    # New workers: none runs the old cell's task, and they come up idle.
    assert wait_until(lambda: "nap" not in workers.inner_text() and workers.locator(
        ".jp-Distkernel-state-idle").count() == 2, timeout=20)


def test_plain_ipykernel_offers_to_load_distkernel(page, lab):
    open_notebook(page, lab, "plain.ipynb",
                  ["import numpy as np, distkernel as dk\nkept = dk.put(np.ones(1_000_000))"],
                  "python3")
    open_panel(page)
    offer = page.locator(f'{PANEL} button[data-action="load"]')
    offer.wait_for(timeout=20_000)
    assert "not loaded" in page.locator(f"{PANEL} .jp-Distkernel-state").inner_text()
    offer.click()
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for(timeout=30_000)
    run_cell(page, 0)
    page.locator(f"{PANEL} .jp-Distkernel-storeText", has_text="7.6 MiB").wait_for()
    largest = page.locator(f"{PANEL} .jp-Distkernel-largest tbody tr").first
    largest.wait_for()
    assert largest.inner_text().split() == ["7.6", "MiB", "put", "In", "[1]"]
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel_plain_ipykernel.png"))

    # The dark theme: the panel takes JupyterLab's colours, light text on a dark ground.
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel").get_by_text("JupyterLab Dark", exact=True).click()
    page.wait_for_selector('body[data-jp-theme-light="false"]', state="attached", timeout=20_000)
    if not page.locator(PANEL).is_visible():  # the menus may have taken the focus
        open_panel(page)
    page.locator(f"{PANEL} .jp-Distkernel-counterValue").first.wait_for()
    assert wait_until(lambda: luminance(page, PANEL, "backgroundColor") < 0.3, timeout=10)
    assert luminance(page, f"{PANEL} .jp-Distkernel-title", "color") > 0.6
    assert luminance(page, f"{PANEL} .jp-Distkernel-counterValue", "color") > 0.6
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel_dark.png"))


def luminance(page, selector: str, prop: str) -> float:
    """0 (black) to 1 (white): the computed colour of ``prop`` of the first match."""
    rgb = page.locator(selector).first.evaluate(
        "(element, prop) => getComputedStyle(element)[prop]", prop)
    red, green, blue = (int(v) for v in re.findall(r"\d+", rgb)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def kernel_name_in_panel(page) -> str:
    return page.locator(f"{PANEL} .jp-Distkernel-kernel").inner_text()


def worker_processes_in_panel(page) -> list[str]:
    """What the panel's worker rows say of their processes (their tooltips), read at once:
    the rows are drawn anew with every update."""
    return page.eval_on_selector_all(f"{PANEL} .jp-Distkernel-workers tr[data-worker]",
                                     "rows => rows.map(row => row.title)")


def test_panel_follows_notebooks_and_survives_a_kernel_restart(page, lab):
    write_notebook(lab.root / "first.ipynb", ["import distkernel as dk"], "distkernel")
    open_notebook(page, lab, "second.ipynb", ["%load_ext distkernel"], "python3")
    open_panel(page)
    page.locator(f'{PANEL} button[data-action="load"]').wait_for()  # not loaded yet
    run_cell(page, 0)  # the user loads distkernel in a cell: the panel connects by itself
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()
    assert "ipykernel" in kernel_name_in_panel(page)

    # A second notebook with its own kernel, opened from the file browser: the panel
    # follows the one in front.
    page.locator(".jp-DirListing-itemName", has_text="first.ipynb").dblclick()
    page.locator(".lm-TabBar-tab", has_text="first.ipynb").wait_for()
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').filter(
        visible=True).first.wait_for(timeout=90_000)
    if not page.locator(PANEL).is_visible():  # the workspace may not remember it open
        open_panel(page)
    assert wait_until(lambda: "distkernel" in kernel_name_in_panel(page), timeout=20)
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()
    first_workers = worker_processes_in_panel(page)
    assert first_workers and all(w.startswith("process ") for w in first_workers), first_workers
    page.locator(".lm-TabBar-tab", has_text="second.ipynb").click()
    assert wait_until(lambda: "ipykernel" in kernel_name_in_panel(page), timeout=20)
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()

    # Closing and opening the panel again: it connects again and stays live.
    page.click('li[data-id="distkernel-panel"]')
    page.wait_for_selector(PANEL, state="hidden")
    open_panel(page)
    page.locator(f"{PANEL} .jp-Distkernel-workers").wait_for()

    # Restarting the first notebook's kernel: the panel comes back with its new workers.
    page.locator(".lm-TabBar-tab", has_text="first.ipynb").click()
    assert wait_until(lambda: "distkernel" in kernel_name_in_panel(page), timeout=20)
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel…").click()
    page.locator(".jp-Dialog-button.jp-mod-accept").click()
    # New worker processes, by their ids: the rows' text alone (state, CPU, memory) may
    # read the same before and after.
    assert wait_until(lambda: (now := worker_processes_in_panel(page)) and
                      not set(now) & set(first_workers), timeout=60)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / "panel_after_kernel_restart.png"))
