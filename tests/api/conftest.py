"""The API tests run on both engines: ``cluster`` is a two-CPU local cluster, and, when
ray is installed, a driver joined to a two-CPU Ray cluster started once for these tests
(``tests/backends/ray/cluster_server.py``). A test that exercises what only the local
engine has (worker processes of its own, its store's limits) is marked
``@pytest.mark.local_only("why")`` and is skipped on Ray with that reason."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

import distkernel as dk

ENGINES = ["local"] + (["ray"] if importlib.util.find_spec("ray") is not None else [])
ROOT = Path(__file__).resolve().parents[2]
#: How long the Ray cluster may take to start (seconds).
RAY_START = 120


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only(reason): the test needs the local engine")


class RayCluster(NamedTuple):
    address: str  # what a driver on this machine joins
    client_address: str | None  # ray://host:port, where Ray Client can run here


@pytest.fixture(scope="package", params=ENGINES)  # Ray stops once tests/api is done
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """"local", or the address of this run's own Ray cluster, which the process joins
    once (before any test's leak check looks): each test's init() uses that connection,
    and its shutdown() ends only that test's tasks and actors."""
    if request.param == "local":
        yield "local"
        return
    import ray
    address = request.getfixturevalue("ray_cluster").address
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    yield address
    ray.shutdown()


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """This run's own two-CPU Ray cluster, on this machine (it serves Ray Client too,
    where that can run)."""
    address_file = tmp_path_factory.mktemp("ray") / "address"
    server = subprocess.Popen([sys.executable, "-m", "tests.backends.ray.cluster_server",
                               str(address_file)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Its input stays open while this process lives: if it ends without the teardown below
    # (killed), the cluster shuts itself down.
    try:
        deadline = time.monotonic() + RAY_START
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


@pytest.fixture
def cluster(request: pytest.FixtureRequest, engine: str) -> Iterator[dk.ClusterInfo]:
    """A fresh two-CPU cluster on ``engine``."""
    marker = request.node.get_closest_marker("local_only")
    if engine != "local" and marker is not None:
        pytest.skip(f"local engine only: {marker.args[0]}")
    info = dk.init(2) if engine == "local" else dk.init(address=engine)
    yield info
    dk.shutdown()
