"""How this process reaches Ray: a Ray of its own, a running cluster, or Ray Client.

``init(address="ray")`` starts a Ray on this machine; ``"auto"`` and ``"host:port"`` join a
running cluster; ``"ray://host:10001"`` connects through Ray Client, whose driver the
cluster's workers cannot reach (reports then travel as results, see ``runner``).
"""

from __future__ import annotations

from typing import Any

import ray

from distkernel.core import config
from distkernel.core.exceptions import DistkernelError

#: Addresses that start a Ray of our own on this machine; any other joins a running one.
LOCAL_RAY = "ray"


def connect(address: str, settings: config.ClusterSettings) -> None:
    """Start a Ray of our own ("ray"), or join the cluster at ``address``."""
    options: dict[str, Any] = {"namespace": settings.namespace, "include_dashboard": False,
                               "log_to_driver": settings.log_to_driver}
    if address == LOCAL_RAY:  # Ray's "local": a new one even if a cluster runs here
        options.update(address="local", num_cpus=settings.num_workers,
                       resources=dict(settings.resources))
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except Exception as exc:
        msg = f"could not start or join Ray at {address!r}: {exc}"
        raise DistkernelError(msg) from exc


def through_ray_client() -> bool:
    """Connected through Ray Client (``ray://``): the cluster's workers cannot reach this
    process."""
    try:
        from ray.util.client import ray as client

        return bool(client.is_connected())
    except Exception:  # noqa: BLE001 - no Ray Client in this Ray: not through it
        return False


def check_connected_to(address: str) -> None:
    """This process is connected to Ray already: an explicit ``host:port`` must be that
    cluster's (any other address means "the Ray this process uses")."""
    if address in (LOCAL_RAY, "auto") or address.startswith("ray://"):
        return
    connected = ray.get_runtime_context().gcs_address
    if connected != address:
        msg = (f"this process is connected to the Ray cluster at {connected} already, not "
               f"{address}: use init(address={connected!r}) or init(address='auto'), or call "
               f"ray.shutdown() first")
        raise DistkernelError(msg)
