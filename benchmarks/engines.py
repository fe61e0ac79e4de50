"""Engine adapters: one small interface over distkernel, Ray and ``multiprocess.Pool``.

The workloads call only these methods, so a figure means the same thing on every
engine. Each engine is imported inside ``start`` and never at module import,
because the start-up figure times the import itself (this module imports only
the standard library at the top for the same reason).

An operation an engine has no equivalent for raises ``Unsupported``; the harness
then prints "n/a" with the reason instead of a number.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

#: Seconds any single get may take before the workload is recorded as failed:
#: a hang in one engine must not stall the whole run.
GET_TIMEOUT = 120.0


class Unsupported(Exception):
    """Raised when the engine has no equivalent of an operation (e.g. ``put`` on a Pool)."""


class Engine:
    """Base adapter: everything optional raises ``Unsupported``."""

    name = "?"

    def start(self, workers: int) -> dict[str, float]:
        """Import the engine and start ``workers`` workers; ``import_s`` and ``init_s``."""
        raise NotImplementedError

    def submit(self, fn: Any, *args: Any) -> Any:
        raise NotImplementedError

    def get(self, handle: Any, timeout: float = GET_TIMEOUT) -> Any:
        raise NotImplementedError

    def put(self, value: Any) -> Any:
        msg = f"{self.name} has no object store"
        raise Unsupported(msg)

    def map_async(self, fn: Any, items: list[Any]) -> list[Any]:
        msg = f"{self.name} has no batched map"
        raise Unsupported(msg)

    def create_actor(self, cls: type, *args: Any) -> Any:
        """Start an actor of ``cls``, its constructor called with ``args``; its handle."""
        msg = f"{self.name} has no actors"
        raise Unsupported(msg)

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

    def open_panel(self) -> Any:
        """A side panel watching the cluster, as JupyterLab's would; ``close()`` it."""
        msg = f"{self.name} has no notebook side panel"
        raise Unsupported(msg)

    def kill_actor(self, actor: Any) -> None:
        pass

    def version(self) -> str:
        return "?"

    def processes(self) -> list[tuple[str, Any]]:
        """``(role, psutil.Process)`` for the driver and everything the engine started.

        The default counts the driver and all its descendants: distkernel's and
        the Pool's workers are direct children of the driver.
        """
        import psutil

        me = psutil.Process(os.getpid())
        return [("driver", me)] + [("worker", p) for p in me.children(recursive=True)]

    def shutdown(self) -> None:
        raise NotImplementedError


class DistkernelEngine(Engine):
    name = "distkernel"

    def __init__(self) -> None:
        self.dk: Any = None
        self._remotes: dict[Any, Any] = {}

    def start(self, workers: int) -> dict[str, float]:
        t0 = time.perf_counter()
        import distkernel as dk

        t1 = time.perf_counter()
        dk.init(num_workers=workers)
        t2 = time.perf_counter()
        self.dk = dk
        return {"import_s": t1 - t0, "init_s": t2 - t1}

    def _remote(self, fn: Any) -> Any:
        # One RemoteFunction per function, as a user would write it: the function is
        # pickled once, not on every submission.
        if fn not in self._remotes:
            self._remotes[fn] = self.dk.remote(fn)
        return self._remotes[fn]

    def submit(self, fn: Any, *args: Any) -> Any:
        return self._remote(fn).remote(*args)

    def get(self, handle: Any, timeout: float = GET_TIMEOUT) -> Any:
        return self.dk.get(handle, timeout=timeout)

    def put(self, value: Any) -> Any:
        return self.dk.put(value)

    def open_panel(self) -> Any:
        return PanelWatcher()

    def create_actor(self, cls: type, *args: Any) -> Any:
        return self._remote(cls).remote(*args)

    def kill_actor(self, actor: Any) -> None:
        self.dk.kill(actor)

    def version(self) -> str:
        return self.dk.__version__

    def shutdown(self) -> None:
        if self.dk is not None:
            self.dk.shutdown()


class DistkernelOnRayEngine(DistkernelEngine):
    """Our API on a Ray of its own (``init(address="ray")``): what the notebook front
    costs on top of plain Ray, run against the "ray" engine's figures."""

    name = "distkernel-ray"

    def start(self, workers: int) -> dict[str, float]:
        t0 = time.perf_counter()
        import distkernel as dk

        t1 = time.perf_counter()
        dk.init(num_workers=workers, address="ray")
        t2 = time.perf_counter()
        self.dk = dk
        return {"import_s": t1 - t0, "init_s": t2 - t1}

    def open_panel(self) -> Any:
        msg = "the side panel's rows for Ray are not measured here"
        raise Unsupported(msg)

    def processes(self) -> list[tuple[str, Any]]:
        import ray

        return ray_processes(super().processes(), ray)


class RayEngine(Engine):
    name = "ray"

    def __init__(self) -> None:
        self.ray: Any = None
        self._remotes: dict[Any, Any] = {}

    def start(self, workers: int) -> dict[str, float]:
        t0 = time.perf_counter()
        import ray

        t1 = time.perf_counter()
        # Ray's defaults otherwise, as a user gets them from `pip install ray`.
        ray.init(num_cpus=workers)
        t2 = time.perf_counter()
        self.ray = ray
        return {"import_s": t1 - t0, "init_s": t2 - t1}

    def join(self) -> None:
        """Use the Ray this process runs already (distkernel on Ray started it): the
        paired run. Its shutdown is left to whoever started it."""
        import ray

        self.ray = ray

    def _remote(self, fn: Any) -> Any:
        if fn not in self._remotes:
            self._remotes[fn] = self.ray.remote(fn)
        return self._remotes[fn]

    def submit(self, fn: Any, *args: Any) -> Any:
        return self._remote(fn).remote(*args)

    def get(self, handle: Any, timeout: float = GET_TIMEOUT) -> Any:
        return self.ray.get(handle, timeout=timeout)

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def create_actor(self, cls: type, *args: Any) -> Any:
        return self._remote(cls).remote(*args)

    def kill_actor(self, actor: Any) -> None:
        self.ray.kill(actor)

    def version(self) -> str:
        return self.ray.__version__

    def processes(self) -> list[tuple[str, Any]]:
        """Driver, plus every process Ray started for this session.

        ``ray.init`` starts gcs_server, raylet, the dashboard head, the autoscaler
        monitor and the log monitor as children of the driver; the raylet starts
        the workers (``ray::IDLE`` / ``ray::<task>``) and two agents
        (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) as its children. So the
        driver's descendants are the whole local cluster; as a safety net, any
        other process whose command line names this session's directory is added
        too (none was found on Ray 2.60, but a daemonized helper would be).
        Workers are ``ray::`` processes not named ``...Agent``; the rest are services.
        """
        return ray_processes(super().processes(), self.ray)

    def shutdown(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()


def ray_processes(rows: list[tuple[str, Any]], ray: Any) -> list[tuple[str, Any]]:
    """The driver and the processes of its Ray session (see ``RayEngine.processes``)."""
    rows = [(_ray_role(p), p) for _, p in rows]
    rows[0] = ("driver", rows[0][1])
    try:  # private API: only used for the safety net
        session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
    except AttributeError:
        session_dir = None
    return rows + _session_processes(session_dir, {p.pid for _, p in rows})


def _ray_role(process: Any) -> str:
    try:
        head = (process.cmdline() or [""])[0]
    except Exception:  # noqa: BLE001 - best effort clean-up
        return "service"
    return "worker" if head.startswith("ray::") and not head.endswith("Agent") else "service"


def _session_processes(session_dir: str | None, known: set[int]) -> list[tuple[str, Any]]:
    import psutil

    if not session_dir:
        return []
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.pid not in known and session_dir in cmdline:
            found.append(("service", process))
    return found


class PoolEngine(Engine):
    name = "pool"

    def __init__(self) -> None:
        self.pool: Any = None

    def start(self, workers: int) -> dict[str, float]:
        t0 = time.perf_counter()
        from multiprocess import Pool

        t1 = time.perf_counter()
        self.pool = Pool(workers)
        t2 = time.perf_counter()
        return {"import_s": t1 - t0, "init_s": t2 - t1}

    def submit(self, fn: Any, *args: Any) -> Any:
        # submit + get is exactly Pool.apply (which is apply_async(...).get()).
        return self.pool.apply_async(fn, args)

    def get(self, handle: Any, timeout: float = GET_TIMEOUT) -> Any:
        if isinstance(handle, list):
            deadline = time.monotonic() + timeout
            return [h.get(max(0.0, deadline - time.monotonic())) for h in handle]
        return handle.get(timeout)

    def map_async(self, fn: Any, items: list[Any]) -> list[Any]:
        return self.pool.map_async(fn, items).get(GET_TIMEOUT)

    def version(self) -> str:
        import multiprocess

        return multiprocess.__version__

    def shutdown(self) -> None:
        """close + join; terminate when a stuck task keeps join from returning."""
        if self.pool is None:
            return
        self.pool.close()
        joiner = threading.Thread(target=self.pool.join, daemon=True)
        joiner.start()
        joiner.join(30)
        if joiner.is_alive():
            self.pool.terminate()
            self.pool.join()


ENGINES: dict[str, type[Engine]] = {
    "distkernel": DistkernelEngine, "ray": RayEngine, "pool": PoolEngine,
    "distkernel-ray": DistkernelOnRayEngine,
}


def make(name: str) -> Engine:
    if name not in ENGINES:
        msg = f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}"
        raise ValueError(msg)
    return ENGINES[name]()


class _Comm:
    """The kernel's end of a panel's comm, as ipykernel hands it to the comm target; what
    it sends is serialized as ipykernel would (JSON), and counted."""

    comm_id = "benchmark-panel"
    kernel = None

    def __init__(self) -> None:
        self.sent = 0
        self.sent_bytes = 0

    def on_msg(self, callback: Any) -> None:
        pass

    def on_close(self, callback: Any) -> None:
        pass

    def send(self, data: Any) -> None:
        import json

        self.sent_bytes += len(json.dumps(data))
        self.sent += 1

    def close(self, data: Any = None) -> None:
        pass


class PanelWatcher:
    """distkernel's panel channel with one panel open: its thread pushes updates at the
    rate JupyterLab's panel gets them, in this process, as in a kernel."""

    def __init__(self) -> None:
        from distkernel.front.panel import PanelChannel

        self._targets: dict[str, Any] = {}
        self.channel = PanelChannel(self, lambda tag: None)
        self.channel.register()
        self.comm = _Comm()
        self._targets["distkernel"](self.comm, {"content": {}})

    # The comm manager's side, as ipykernel's: the channel registers its target here.
    def register_target(self, name: str, callback: Any) -> None:
        self._targets[name] = callback

    def unregister_target(self, name: str, callback: Any) -> None:
        self._targets.pop(name, None)

    def close(self) -> None:
        self.channel.close()

