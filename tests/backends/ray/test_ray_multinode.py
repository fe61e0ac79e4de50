"""Several machines, played on one: a Ray cluster of a head and two worker nodes started by
Ray's own ``cluster_utils.Cluster``, each node with a custom resource of its own. Tasks and
actors land where their resources are (checked by node id), a 100 MB array made on one
node is read intact on another, a task on a node removed mid-run fails with our error,
and the records and ``%dist status`` name the nodes. Nothing is left running after."""

from __future__ import annotations

import importlib.util

import pytest

from tests.backends.ray.scripts import NOTHING_LEFT
from tests.conftest import run_driver_script

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'distkernel[ray]')")

SCRIPT = """
import signal
import time
import numpy as np
from ray.cluster_utils import Cluster
import distkernel as dk
from distkernel.api import runtime
from distkernel.front.status_view import status_view

def overdue(signum, frame):   # stops a hang inside the try below, so its finally runs
    raise TimeoutError("the multi-node script took too long")

signal.signal(signal.SIGALRM, overdue)
signal.alarm(200)
STORE = 300 * 1024 * 1024
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "resources": {"head": 1}, "object_store_memory": STORE,
    "include_dashboard": False})
first = cluster.add_node(num_cpus=1, resources={"first": 1}, object_store_memory=STORE)
second = cluster.add_node(num_cpus=1, resources={"second": 1}, object_store_memory=STORE)
cluster.wait_for_nodes()

try:
    dk.init(address=cluster.address)
    nodes = dk.status()["nodes"]
    assert len(nodes) == 3 and all(n["alive"] for n in nodes), nodes
    index_of = {n["node_id"]: n["index"] for n in nodes}

    @dk.remote
    def where():
        import ray
        return ray.get_runtime_context().get_node_id()

    @dk.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    @dk.remote
    def check(arr):
        import ray
        return ray.get_runtime_context().get_node_id(), arr.shape, float(arr[-1]), float(arr.sum())

    @dk.remote(resources={"second": 0.5})
    class Keeper:
        def __init__(self):
            self.items = []
        def keep(self, x):
            import ray
            self.items.append(x)
            return ray.get_runtime_context().get_node_id(), len(self.items)

    @dk.remote
    def slow(seconds):
        for _ in range(int(seconds * 10)):
            time.sleep(0.1)
        return seconds

    # Tasks and actors land on the node whose resource they ask for.
    on_first = where.options(resources={"first": 1}).remote()
    on_second = where.options(resources={"second": 1}).remote()
    on_head = where.options(resources={"head": 1}).remote()
    assert dk.get([on_first, on_second, on_head]) == [first.node_id, second.node_id,
                                                      cluster.head_node.node_id]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        second.node_id, soft=False))
    assert dk.get([pinned.remote() for _ in range(3)]) == [second.node_id] * 3
    keeper = Keeper.remote()
    assert dk.get([keeper.keep.remote(1), keeper.keep.remote(2)]) == [(second.node_id, 1),
                                                                      (second.node_id, 2)]

    # 100 MB made on the first node, read on the second and in the driver.
    n = 100 * 1024 * 1024 // 8
    big = make.options(resources={"first": 1}).remote(n)
    # (the keeper holds half of "second")
    node, shape, last, total = dk.get(check.options(resources={"second": 0.5}).remote(big))
    assert node == second.node_id and shape == (n,) and last == n - 1, (node, shape, last)
    assert total == float(n) * (n - 1) / 2
    arr = dk.get(big)
    assert arr.shape == (n,) and arr[12345] == 12345.0

    # The records name the node each task ran on, by the number status() gives it (they
    # end a moment after the results).
    deadline = time.monotonic() + 20
    while True:
        records = [r for r in dk.timeline() if r.name == "where"]
        if len(records) == 6 and all(r.status == "finished" for r in records):
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.05)
    expected = [first.node_id, second.node_id, cluster.head_node.node_id] + [second.node_id] * 3
    assert sorted(r.worker_id for r in records) == sorted(index_of[n] for n in expected)
    text = repr(status_view(runtime.current_engine().snapshot()))   # what %dist status shows
    assert "3 nodes, 3 CPUs" in text and first.node_id[:8] in text, text

    # A node removed while its task runs: the task fails with our error (no retry asked).
    doomed = slow.options(resources={"first": 1}, max_retries=0).remote(60)
    time.sleep(2.0)
    cluster.remove_node(first)
    try:
        dk.get(doomed, timeout=60)
    except (dk.WorkerCrashedError, dk.ObjectLostError) as error:
        print("removed node:", type(error).__name__)
    else:
        raise AssertionError("a task on a removed node returned")

finally:
    dk.shutdown()
    cluster.shutdown()
print("multinode ok")
"""


@pytest.mark.timeout(320)
def test_a_head_and_two_nodes_on_this_machine(tmp_path):
    done = run_driver_script(tmp_path, SCRIPT + NOTHING_LEFT, timeout=300)
    assert "multinode ok" in done.stdout
    assert "removed node: WorkerCrashedError" in done.stdout, done.stdout
