"""The driver scripts here that need no Ray of their own join one cluster, started once per
test module that asks for it (``cluster_server``), and stopped before the next module's
Rays start: a driver joins in about a second, where starting a Ray takes several. Those
that test starting one (``address="ray"``) still do."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of this module's two-CPU Ray cluster."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'distkernel[ray]')")
    from tests.backends.ray import cluster_server

    with cluster_server.running(tmp_path_factory.mktemp("ray")) as started:
        yield started.address
