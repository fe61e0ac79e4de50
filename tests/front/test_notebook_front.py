"""The notebook front through a real kernel: extension, magics, output routing, timings, kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from distkernel.store import reaper
from tests.conftest import process_alive, wait_until
from tests.kernel_session import KernelSession

TASKS = """
import time, distkernel as dk
@dk.remote
def square(x):
    print("squaring", x)
    return x * x
"""


@pytest.fixture
def kernel():
    session = KernelSession("python3")
    started = time.monotonic()
    loaded = session.run("%load_ext distkernel")
    session.load_seconds = time.monotonic() - started
    assert loaded.ok, loaded.text()
    yield session
    session.shutdown()


def test_load_ext_is_fast_and_shows_the_cluster(kernel):
    assert kernel.load_seconds < 5  # includes the kernel's own round trip; the cell itself:
    timed = kernel.run("%reload_ext distkernel")
    assert timed.ok
    html = [m["content"]["data"]["text/html"] for m in timed.of_type("display_data")]
    assert any("distkernel" in h and "workers" in h for h in html)
    check = kernel.run("import time, distkernel as dk\nt = time.perf_counter()\n"
                       "%reload_ext distkernel\nprint(time.perf_counter() - t < 1.0)")
    assert "True" in check.text()


def test_remote_cell_reads_and_assigns_variables(kernel):
    kernel.run("data = list(range(10))\nfactor = 3\nunused = object()")
    run = kernel.run("%%remote\ntotal = sum(data) * factor\nlabel = f'total={total}'\ntotal + 1")
    assert run.ok, run.text()
    results = run.of_type("execute_result")
    assert results and results[0]["content"]["data"]["text/plain"] == "136"
    back = kernel.run("print(total, label)")
    assert "135 total=135" in back.text()


def test_remote_cell_displays_rich_repr_and_large_values_go_through_the_store(kernel):
    kernel.run("import numpy as np\nbig = np.ones(2_000_000)\n"
               "class Box:\n    def __init__(self, v): self.v = v\n"
               "    def _repr_html_(self): return f'<b>box {self.v}</b>'")
    run = kernel.run("%%remote\nBox(float(big.sum()))")
    assert run.ok, run.text()
    data = run.of_type("execute_result")[0]["content"]["data"]
    assert data["text/html"] == "<b>box 2000000.0</b>"
    record = kernel.run("import distkernel as dk\nr = dk.timeline()[-1]\n"
                        "print(r.kind, r.bytes_in > 16_000_000)")
    assert "cell True" in record.text()


def test_remote_cell_on_all_workers_gathers_lists(kernel):
    run = kernel.run("%%remote --all\nprint('hello from', WORKER_INDEX)\n"
                     "me = (WORKER_INDEX, NUM_WORKERS)")
    assert run.ok, run.text()
    shown: dict[str, str] = {}  # display id -> its latest text, in the order first shown
    for message in run.of_type("display_data", "update_display_data"):
        display_id = message["content"].get("transient", {}).get("display_id", "")
        text = message["content"]["data"].get("text/plain", "")
        if display_id in shown or text.startswith("[WORKER_INDEX") or not text:
            shown[display_id] = text
    groups = [text for text in shown.values() if text.startswith("[WORKER_INDEX")]
    assert len(groups) == 2, shown  # one growing display of output per worker ...
    for index, text in enumerate(groups):  # ... in WORKER_INDEX order, titled with it
        assert text.startswith(f"[WORKER_INDEX {index} · worker ")
        assert f"hello from {index}" in text
    assert "[(0, 2), (1, 2)]" in kernel.run("print(me)").text()
    two = kernel.run("%%remote -n 2\nx = WORKER_INDEX * 10")
    assert two.ok and "[0, 10]" in kernel.run("print(x)").text()


def test_remote_error_shows_cell_lines(kernel):
    run = kernel.run("%%remote\na = 1\nb = 0\na / b")
    assert not run.ok
    error = run.of_type("error")[0]["content"]
    assert error["ename"] == "ZeroDivisionError"
    traceback = "\n".join(error["traceback"])
    assert "line 3" in traceback and "a / b" in traceback
    assert "worker.py" not in traceback  # our own frames are left out


def test_task_error_in_normal_cell_points_at_the_cell(kernel):
    kernel.run("import distkernel as dk")
    kernel.run("@dk.remote\ndef broken(x):\n    y = x + 1\n    return y / 0")
    run = kernel.run("dk.get(broken.remote(1))")
    assert not run.ok
    traceback = "\n".join(run.of_type("error")[0]["content"]["traceback"])
    assert "Cell In[" in traceback and "return y / 0" in traceback


@pytest.mark.parametrize("line", ["--bogus", "-n 0", "-n 1 --all", "--pull nothere",
                                  "--push missing_name"])
def test_bad_remote_options_print_usage_not_traceback(kernel, line):
    run = kernel.run(f"%%remote {line}\nvalue = 1")
    text = run.text()
    assert "UsageError" in text and "Traceback" not in text


def test_output_streams_into_the_submitting_cell_while_another_runs(kernel):
    kernel.run(TASKS)
    first = kernel.run("@dk.remote\ndef later():\n    import time\n    time.sleep(1.0)\n"
                       "    print('late line')\n\nref = later.remote()")
    second = kernel.run("import time\ntime.sleep(2.0)\nprint('second cell')")
    kernel.collect(1.0)
    in_second = second.text()
    assert "late line" not in in_second  # never under whichever cell happens to run
    late = [m for m in first.outputs + kernel.stray
            if m["parent_header"].get("msg_id") == first.msg_id
            and "late line" in m["content"].get("data", {}).get("text/plain", "")]
    assert late, "the task's output did not come with the first cell's parent header"


def test_output_rate_limit_marks_suppressed_lines(kernel):
    kernel.run("import distkernel as dk\n@dk.remote\ndef chatty():\n"
               "    for i in range(3000):\n        print('line', i)")
    run = kernel.run("dk.get(chatty.remote())")
    kernel.collect(0.5)
    texts = [m["content"]["data"]["text/plain"] for m in run.outputs + kernel.stray
             if m["parent_header"].get("msg_id") == run.msg_id and "data" in m["content"]
             and m["content"]["data"].get("text/plain", "").startswith("[worker")]
    assert texts and "lines suppressed" in texts[-1]


def test_inline_timings_after_cells_with_tasks(kernel):
    kernel.run(TASKS)
    run = kernel.run("dk.get([square.remote(i) for i in range(4)])")
    timings = run.timings()
    assert timings and "4 tasks" in timings[0]["text/plain"]
    assert "jp-Distkernel-stream" in timings[0]["text/html"]
    plain = kernel.run("x = 1")
    assert not plain.of_type("display_data")  # no tasks, no timings
    kernel.run("@dk.remote\ndef leaf(x):\n    return x\n\n"
               "@dk.remote\ndef parent():\n"
               "    return sum(dk.get([leaf.remote(1), leaf.remote(2)]))")
    nested = kernel.run("dk.get(parent.remote())")
    counted = [data["text/plain"] for data in nested.timings()]
    assert counted and "3 tasks" in counted[0]  # the children count in their cell
    kernel.run("%dist timings full")
    full = kernel.run("dk.get(square.remote(3))")
    assert any("<table" in data["text/html"] for data in full.timings())
    kernel.run("%dist timings off")
    off = kernel.run("dk.get(square.remote(3))")
    assert off.ok and not off.timings()


def test_dist_magic_subcommands(kernel):
    assert "usage" in kernel.run("%dist").text().lower()
    status = kernel.run("%dist status")
    data = status.of_type("execute_result")[0]["content"]["data"]
    assert "<table" in data["text/html"] and "worker" in data["text/plain"]
    assert kernel.run("%dist scale 3").ok
    kernel.run("import distkernel as dk")
    assert wait_until(lambda: "3" in kernel.run(
        "print(sum(1 for w in dk.status()['workers'] if w['state'] == 'idle'))").text())
    assert kernel.run("%dist restart").ok
    assert "3" in kernel.run("print(dk.status()['num_workers'])").text()
    timeline = kernel.run("dk.get(dk.remote(lambda: 1).remote())\n%dist timeline --last 5")
    assert any("jp-Distkernel-stream" in m["content"]["data"].get("text/html", "")
               for m in timeline.of_type("display_data"))
    assert kernel.run("%dist shutdown").ok
    assert "False" in kernel.run("print(dk.is_initialized())").text()
    assert kernel.run("%dist init -n 1 --store 64MB").ok
    assert "1" in kernel.run("print(dk.status()['num_workers'])").text()
    assert "UsageError" in kernel.run("%dist timings sideways").text()


def test_interrupt_cancels_the_cells_tasks_and_pool_stays_healthy(kernel):
    kernel.run("import distkernel as dk, time\n@dk.remote\ndef forever():\n"
               "    while True:\n        time.sleep(0.05)")
    run = kernel.run("dk.get([forever.remote(), forever.remote()])", wait=False)
    time.sleep(1.5)
    started = time.monotonic()
    kernel.manager.interrupt_kernel()
    kernel.wait(run, timeout=30)
    assert run.of_type("error")[0]["content"]["ename"] == "KeyboardInterrupt"
    idle = "print(all(w['current_task'] is None for w in dk.status()['workers']))"
    assert wait_until(lambda: "True" in kernel.run(idle).text(), timeout=5)
    assert time.monotonic() - started < 6
    assert "[1, 1]" in kernel.run("print(dk.get([dk.remote(lambda: 1).remote()] * 2))").text()


def test_unload_shuts_the_cluster_down(kernel):
    pids = _worker_pids(kernel)
    assert kernel.run("%unload_ext distkernel").ok
    assert wait_until(lambda: not any(process_alive(p) for p in pids))


def test_restart_and_sigkill_stop_every_worker():
    session = KernelSession("python3")
    try:
        session.run("%load_ext distkernel")
        pids = _worker_pids(session)
        old_pid = session.pid
        session.manager.restart_kernel(now=False)
        assert wait_until(lambda: not any(process_alive(p) for p in pids), timeout=15)
        assert not reaper.segments_of(old_pid)
        session.pid = session.manager.provisioner.process.pid
        session.client.wait_for_ready(timeout=30)
        session.run("%load_ext distkernel\nimport numpy as np, distkernel as dk\n"
                    "ref = dk.put(np.ones(1_000_000))")
        pids = _worker_pids(session)
        assert reaper.segments_of(session.pid)
        os.kill(session.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(process_alive(p) for p in pids), timeout=15)
        assert wait_until(lambda: not reaper.segments_of(session.pid), timeout=15)
    finally:
        session.manager.shutdown_kernel(now=True)


def test_distkernel_kernel_starts_with_pool(tmp_path):
    prefix = tmp_path / "prefix"
    done = subprocess.run([sys.executable, "-m", "distkernel", "install", "--prefix",
                           str(prefix)], capture_output=True, text=True, check=True)
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "distkernel"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (distkernel)" and "installed" in done.stdout.lower()
    assert spec["argv"][0] == sys.executable
    env = dict(os.environ, JUPYTER_PATH=str(prefix / "share" / "jupyter"))
    session = KernelSession("distkernel", env=env)
    try:
        run = session.run("import distkernel as dk\n"
                          "print('distkernel' in get_ipython().extension_manager.loaded,"
                          " dk.is_initialized())")
        assert "True True" in run.text()
        remote = session.run("%%remote\n6 * 7")
        assert remote.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    finally:
        session.shutdown()


def test_usage_errors_of_install(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "distkernel", "install", "--user", "--prefix",
                          str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "not allowed with" in bad.stderr


def _worker_pids(session: KernelSession) -> list[int]:
    run = session.run("import distkernel as dk, time\ntime.sleep(0.3)\n"
                      "print(*[w['pid'] for w in dk.status()['workers']])")
    return [int(p) for p in run.text().split()]



def test_main_job_serves_notebooks_with_the_distkernel_kernel(tmp_path):
    """`./run lab` (the README's first command) on a free port: the kernel is offered."""
    import secrets
    import socket
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_hex(8)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen([str(root / "run"), "lab", f"--ServerApp.port={port}",
                               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                               "--LabApp.news_url=None"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/kernelspecs?token={token}"

        def answered():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return json.load(response)
            except OSError:
                return None

        assert wait_until(lambda: answered() is not None or server.poll() is not None, 120)
        specs = answered()
        assert specs is not None, (tmp_path / "lab.log").read_text()[-2000:]
        assert specs["kernelspecs"]["distkernel"]["spec"]["display_name"] == \
            "Python 3 (distkernel)"
        served = f"http://127.0.0.1:{port}/api/contents?token={token}"
        with urllib.request.urlopen(served, timeout=5) as response:
            names = {item["name"] for item in json.load(response)["content"]}
        assert "quickstart.ipynb" in names
        assert f"127.0.0.1:{port}/lab?token=" in (tmp_path / "lab.log").read_text()
    finally:
        server.terminate()
        server.wait(15)
        log.close()


def test_remote_push_pull_and_no_pull(kernel):
    kernel.run("hidden = 5\nname = 'hidden'")
    pushed = kernel.run("%%remote --push hidden\nresult = globals()[name] * 2")
    assert pushed.ok, pushed.text()
    assert "10" in kernel.run("print(result)").text()
    kernel.run("a = b = 0")
    limited = kernel.run("%%remote --pull a\na = 1\nb = 2")
    assert limited.ok and "1 0" in kernel.run("print(a, b)").text()
    kept = kernel.run("%%remote --no-pull\na = 99")
    assert kept.ok and "1" in kernel.run("print(a)").text()


def test_remote_timeout_cancels_and_quiet_hides_output(kernel):
    slow = kernel.run("%%remote --timeout 0.5\nimport time\ntime.sleep(30)")
    assert "did not finish within 0.5 s" in slow.text()
    idle = "print(all(w['current_task'] is None for w in dk.status()['workers']))"
    kernel.run("import distkernel as dk")
    assert wait_until(lambda: "True" in kernel.run(idle).text(), timeout=10)
    quiet = kernel.run("%%remote --quiet\nprint('should not show')\nvalue = 3")
    kernel.collect(0.5)
    assert quiet.ok and "should not show" not in quiet.text()
    assert not quiet.of_type("display_data")  # no output display, no timings
    assert "3" in kernel.run("print(value)").text()


def test_interrupting_a_remote_cell_cancels_it(kernel):
    run = kernel.run("%%remote\nimport time\nwhile True:\n    time.sleep(0.05)", wait=False)
    time.sleep(1.5)
    kernel.manager.interrupt_kernel()
    kernel.wait(run, timeout=30)
    assert not run.ok
    kernel.run("import distkernel as dk")
    idle = "print(all(w['current_task'] is None for w in dk.status()['workers']))"
    assert wait_until(lambda: "True" in kernel.run(idle).text(), timeout=5)


def test_interrupt_replaces_a_worker_whose_task_ignores_it(kernel):
    kernel.run("import distkernel as dk, time\n@dk.remote\ndef stubborn():\n"
               "    while True:\n        try:\n            time.sleep(0.05)\n"
               "        except BaseException:\n            pass")
    before = set(_worker_pids(kernel))
    run = kernel.run("dk.get(stubborn.remote())", wait=False)
    time.sleep(1.5)
    started = time.monotonic()
    kernel.manager.interrupt_kernel()
    kernel.wait(run, timeout=30)
    idle = "print(all(w['current_task'] is None for w in dk.status()['workers']))"
    assert wait_until(lambda: "True" in kernel.run(idle).text(), timeout=10)
    assert time.monotonic() - started < 8  # the 2 s grace, then a new worker
    assert set(_worker_pids(kernel)) != before
    assert "[1]" in kernel.run("print(dk.get([dk.remote(lambda: 1).remote()]))").text()
