"""The API tests run on both engines: ``cluster`` is a two-CPU local cluster, and, when
ray is installed, a driver joined to a two-CPU Ray cluster started once for these tests
(``tests/backends/ray/cluster_server.py``). A test that exercises what only the local
engine has (worker processes of its own, its store's limits) is marked
``@pytest.mark.local_only("why")`` and is skipped on Ray with that reason."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

import distkernel as dk
from tests.backends.ray import cluster_server
from tests.backends.ray.cluster_server import RayCluster

ENGINES = ["local"] + (["ray"] if importlib.util.find_spec("ray") is not None else [])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only(reason): the test needs the local engine")


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
    with cluster_server.running(tmp_path_factory.mktemp("ray")) as started:
        yield started


@pytest.fixture
def cluster(request: pytest.FixtureRequest, engine: str) -> Iterator[dk.ClusterInfo]:
    """A fresh two-CPU cluster on ``engine``."""
    marker = request.node.get_closest_marker("local_only")
    if engine != "local" and marker is not None:
        pytest.skip(f"local engine only: {marker.args[0]}")
    info = dk.init(2) if engine == "local" else dk.init(address=engine)
    yield info
    dk.shutdown()
