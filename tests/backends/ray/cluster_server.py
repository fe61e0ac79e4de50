"""A Ray cluster of one node on this machine, kept running for a group of tests.

``python -m tests.backends.ray.cluster_server ADDRESS_FILE`` starts it with Ray's own
``cluster_utils.Cluster``, writes its address to ADDRESS_FILE, and shuts it down, with
every process it started, on SIGTERM or once its standard input closes (the test process
that started it ended, however it ended). Tests join it with ``init(address=...)``: a
driver joins in about a second, where starting a Ray of its own takes several.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from ray.cluster_utils import Cluster

#: The head node's size: as the local engine's test clusters, two CPUs.
NUM_CPUS = 2
STORE_BYTES = 256 * 1024 * 1024


def main(address_file: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NUM_CPUS, "object_store_memory": STORE_BYTES, "include_dashboard": False})
    try:
        with open(address_file + ".part", "w") as handle:
            handle.write(cluster.address)
        os.replace(address_file + ".part", address_file)
        stop.wait()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
