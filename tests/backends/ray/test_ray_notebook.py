"""The notebook front on Ray, through a real kernel: ``%dist init --address ray``, task output
in the submitting cell (also when it comes after the cell ended), inline timings,
``%%remote`` (``--all``: one copy per node; ``-n N``: N copies anywhere) and ``%dist status``
showing the nodes."""

from __future__ import annotations

import importlib.util

import pytest

from tests.kernel_session import KernelSession

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'distkernel[ray]')")


@pytest.fixture(scope="module")
def ray_kernel():
    session = KernelSession("python3")
    try:
        assert session.run("%load_ext distkernel").ok
        assert session.run("%dist shutdown").ok
        started = session.run("%dist init --address ray -n 2", timeout=120)
        assert started.ok, started.text()
        assert session.run("import distkernel as dk\n"
                           "assert dk.status()['backend'] == 'ray'").ok
        yield session
    finally:
        session.run("%dist shutdown", timeout=60)
        session.shutdown()


def test_task_output_and_timings_land_in_the_cell(ray_kernel):
    ray_kernel.run("@dk.remote\ndef square(x):\n    print('squaring', x)\n    return x * x")
    run = ray_kernel.run("dk.get([square.remote(i) for i in range(4)])", timeout=60)
    assert run.ok, run.text()
    ray_kernel.collect(0.5)
    text = "\n".join(m["content"].get("data", {}).get("text/plain", "")
                     for m in run.outputs + ray_kernel.stray
                     if m["parent_header"].get("msg_id") == run.msg_id)
    assert all(f"squaring {i}" in text for i in range(4)), text
    timings = run.timings()
    assert timings and "4 tasks" in timings[-1]["text/plain"], timings


def test_late_output_goes_to_the_cell_that_submitted_the_task(ray_kernel):
    first = ray_kernel.run("@dk.remote\ndef later():\n    import time\n    time.sleep(1.5)\n"
                           "    print('late line')\n\nref = later.remote()")
    second = ray_kernel.run("import time\ntime.sleep(3.0)\nprint('second cell')")
    ray_kernel.collect(1.0)
    assert "late line" not in second.text()
    late = [m for m in first.outputs + ray_kernel.stray
            if m["parent_header"].get("msg_id") == first.msg_id
            and "late line" in m["content"].get("data", {}).get("text/plain", "")]
    assert late, "the task's output did not come with the first cell's parent header"


def test_remote_cell_runs_per_node_and_n_copies(ray_kernel):
    ray_kernel.run("data = list(range(10))")
    once = ray_kernel.run("%%remote\ntotal = sum(data)\ntotal", timeout=60)
    assert once.ok, once.text()
    assert once.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "45"
    per_node = ray_kernel.run("%%remote --all\nme = (WORKER_INDEX, NUM_WORKERS)", timeout=60)
    assert per_node.ok, per_node.text()
    assert "[(0, 1)]" in ray_kernel.run("print(me)").text()  # one node here
    copies = ray_kernel.run("%%remote -n 2\npart = sum(data[WORKER_INDEX::NUM_WORKERS])",
                            timeout=60)
    assert copies.ok, copies.text()
    assert "[20, 25]" in ray_kernel.run("print(part)").text()
    too_many = ray_kernel.run("%%remote -n 5\nx = 1")
    assert "UsageError" in too_many.text() and "2 CPU" in too_many.text()


def test_dist_status_shows_the_nodes(ray_kernel):
    run = ray_kernel.run("%dist status")
    assert run.ok, run.text()
    text = run.text()
    assert "ray cluster: 1 nodes, 2 CPUs" in text and "alive" in text, text
    # One string printed: a kernel may send the pieces of print(a, b) as two outputs.
    nodes = ray_kernel.run("nodes = dk.status()['nodes']\n"
                           "print(f\"{len(nodes)} {nodes[0]['resources_total']['CPU']}\")")
    assert "1 2.0" in nodes.text(), nodes.text()
