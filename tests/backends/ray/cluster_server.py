"""A Ray cluster of one node on this machine, kept running for a group of tests.

``python -m tests.backends.ray.cluster_server ADDRESS_FILE`` starts it with Ray's own
``cluster_utils.Cluster``, writes its address to ADDRESS_FILE, and shuts it down, with
every process it started, on SIGTERM or once its standard input closes (the test process
that started it ended, however it ended). Tests join it with ``init(address=...)``: a
driver joins in about a second, where starting a Ray of its own takes several.

When Ray Client can run here (``ray[client]``), the head serves it too, and a second line
of ADDRESS_FILE says where: ``ray://host:port``.

``running(folder)`` is the test process's side: it starts the server, yields the
addresses, and stops it, checking that no process of the cluster is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil

#: The head node's size: as the local engine's test clusters, two CPUs.
NUM_CPUS = 2
STORE_BYTES = 256 * 1024 * 1024
#: How long the cluster may take to start (seconds).
START_TIMEOUT = 120
ROOT = Path(__file__).resolve().parents[3]


class RayCluster(NamedTuple):
    address: str  # what a driver on this machine joins
    client_address: str | None  # ray://host:port, where Ray Client can run here


@contextlib.contextmanager
def running(folder: Path) -> Iterator[RayCluster]:
    """A cluster served by this module in a process of its own, for the ``with`` block."""
    address_file = folder / "address"
    server = subprocess.Popen([sys.executable, "-m", "tests.backends.ray.cluster_server",
                               str(address_file)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Its input stays open while this process lives: if it ends without the teardown below
    # (killed), the cluster shuts itself down.
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not address_file.exists():
            assert server.poll() is None, f"the Ray cluster did not start ({server.returncode})"
            assert time.monotonic() < deadline, "the Ray cluster did not start in time"
            time.sleep(0.1)
        address, *client = address_file.read_text().split("\n")
        yield RayCluster(address, client[0] if client else None)
    finally:
        started = psutil.Process(server.pid).children(recursive=True)
        server.terminate()  # the cluster stops every process it started
        server.wait(60)
        server.stdin.close()  # type: ignore[union-attr]
        left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for process in left:
            os.kill(process.pid, 9)
        assert not left, f"the Ray cluster left processes running: {left}"


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
    from ray.cluster_utils import Cluster

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
