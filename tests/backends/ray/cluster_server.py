"""A Ray cluster of one node on this machine, kept running for a group of tests.

``python -m tests.backends.ray.cluster_server ADDRESS_FILE`` starts it with Ray's own
``cluster_utils.Cluster``, writes its address to ADDRESS_FILE, and shuts it down, with
every process it started, on SIGTERM or once its standard input closes (the test process
that started it ended, however it ended). Tests join it with ``init(address=...)``: a
driver joins in about a second, where starting a Ray of its own takes several.

When Ray Client can run here (``ray[client]``), the head serves it too, and a second line
of ADDRESS_FILE says where: ``ray://host:port``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import threading

from ray.cluster_utils import Cluster

#: The head node's size: as the local engine's test clusters, two CPUs.
NUM_CPUS = 2
STORE_BYTES = 256 * 1024 * 1024


def main(address_file: str) -> None:
    # The head's Ray Client proxy forks a server per client while its gRPC threads run;
    # with gRPC's fork handlers on, that fork sometimes hung or the child died at once
    # (the client then waits 30 s for nothing). Its processes inherit this.
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    head = {"num_cpus": NUM_CPUS, "object_store_memory": STORE_BYTES,
            "include_dashboard": False}
    if importlib.util.find_spec("grpc") is not None:  # Ray Client's one extra need
        head["ray_client_server_port"] = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args=head)
    addresses = [cluster.address]
    if "ray_client_server_port" in head:
        host = cluster.address.rpartition(":")[0]
        addresses.append(f"ray://{host}:{head['ray_client_server_port']}")
    try:
        with open(address_file + ".part", "w") as handle:
            handle.write("\n".join(addresses))
        os.replace(address_file + ".part", address_file)
        stop.wait()
    finally:
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main(sys.argv[1])
