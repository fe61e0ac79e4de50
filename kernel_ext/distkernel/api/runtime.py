"""``init`` / ``shutdown`` / ``status``: the one cluster of this process.

Every API call goes through ``client()``: inside a worker it is the link to
the driver; in the driver it is the running engine, started on first use.

``init`` takes Ray's keywords, so that ``ray.init(...)`` lines run unchanged with
``import distkernel as ray``: what the local engine can honour becomes a
``config.ClusterSettings``; what is harmless is accepted and has no effect; what
rests on a multi-node Ray cluster is refused with the alternative.
"""

from __future__ import annotations

import atexit
import dataclasses
import html
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distkernel.api.options import checked_resources
from distkernel.core import config, context, refs
from distkernel.core.exceptions import DistkernelError, safe_repr

if TYPE_CHECKING:  # the engine's module is imported when a cluster starts
    from distkernel.backends.base import Engine
    from distkernel.core.context import Client

_lock = threading.RLock()
_engine: Engine | None = None
_info: ClusterInfo | None = None
_settings: config.ClusterSettings | None = None
_start_hooks: list[Callable[[Engine], None]] = []

LOCAL_ADDRESSES = (None, "local")
#: The machine's address, as Ray reports a one-node cluster started on it.
NODE_IP_ADDRESS = "127.0.0.1"
#: In a worker: the cluster's namespace (the worker environment carries it there).
NAMESPACE_VARIABLE = "DISTKERNEL_NAMESPACE"

logger = logging.getLogger("distkernel")

#: Ray ``init`` keywords that change nothing on one local node: accepted, with no effect.
#: There is no dashboard; logs go through the standard 'distkernel' logger; labels and node
#: addresses choose among nodes and there is one; ``local_mode`` runs tasks in the driver
#: for debugging and they run in workers with the same results; ``_plasma_directory``: the
#: store lives in DISTKERNEL_SHM_DIR and is sized to fit it; the rest tune Ray's own
#: processes (Redis, metrics, tracing, temporary folders), which do not exist here.
IGNORED_INIT_OPTIONS = frozenset({
    "dashboard_host", "dashboard_port", "configure_logging", "logging_format",
    "logging_config", "labels", "local_mode", "proxy_server_url", "cgroup_path",
    "system_reserved_cpu", "system_reserved_memory", "_system_config", "_temp_dir",
    "_plasma_directory", "_node_ip_address", "_node_name", "_redis_username",
    "_redis_password", "_metrics_export_port", "_tracing_startup_hook", "_skip_env_hook",
    "_enable_object_reconstruction", "_driver_object_store_memory", "_memory"})
#: Ray ``init`` keywords the local engine cannot honour, with what to do instead.
REFUSED_INIT_OPTIONS = {
    "object_spilling_directory": "set the DISTKERNEL_SPILL_DIR environment variable before "
                                 "init() instead",
    "storage": "cluster storage was removed from Ray in 2.48 too; write to a folder of your "
               "choice",
    "allow_multiple": "one cluster per process: call shutdown() before another init()",
    "job_config": "give runtime_env= and namespace= to init() itself",
    "enable_resource_isolation": "the local engine does not use cgroups; drop the option",
}

#: ``runtime_env`` fields the local engine honours, and those that change nothing here.
RUNTIME_ENV_FIELDS = ("env_vars", "working_dir")
RUNTIME_ENV_IGNORED = ("config", "excludes")  # setup timeouts; what an upload leaves out
_INSTALL = ("install the packages into the kernel's own Python environment (pip install "
            "... in a terminal or %pip install in a cell) and restart the kernel")
#: What to do instead, for fields that need Ray's per-job environments.
RUNTIME_ENV_ALTERNATIVES = {
    "pip": _INSTALL, "uv": _INSTALL, "conda": "start the kernel in that conda environment",
    "py_modules": "put the modules in working_dir (workers import from it) or on sys.path",
    "py_executable": "start the kernel with that Python",
    "container": "run the kernel inside that container",
    "image_uri": "run the kernel inside that image",
    "worker_process_setup_hook": "call the set-up function at the start of your tasks",
}


@dataclass(frozen=True)
class ClusterInfo:
    """What ``init`` started; shows itself as a one-line summary in a notebook.

    It also behaves like the context Ray's ``init`` returns: ``address_info`` (and
    ``info["address"]``), ``dashboard_url`` (None: there is no dashboard), and
    ``with init(): ...`` shuts the cluster down at the end of the block.
    """

    backend: str
    num_workers: int
    object_store_memory: int
    address: str
    cluster_id: str
    object_store_address: str = ""
    namespace: str = ""
    python_version: str = field(
        default_factory=lambda: "{}.{}.{}".format(*sys.version_info[:3]))
    dashboard_url: None = None

    @property
    def address_info(self) -> dict[str, Any]:
        """Where the cluster is, under Ray's key names (``node_id`` is the cluster's id)."""
        return {"address": self.address, "node_ip_address": NODE_IP_ADDRESS,
                "raylet_ip_address": NODE_IP_ADDRESS,
                "object_store_address": self.object_store_address,
                "webui_url": None, "node_id": self.cluster_id}

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def __enter__(self) -> ClusterInfo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutdown()

    def disconnect(self) -> None:
        """Shut the cluster down (Ray's name, for a driver attached to its own cluster)."""
        shutdown()

    def __repr__(self) -> str:
        return (f"ClusterInfo(backend={self.backend!r}, num_workers={self.num_workers}, "
                f"object_store_memory={config.format_bytes(self.object_store_memory)!r})")

    def _repr_html_(self) -> str:
        store = html.escape(config.format_bytes(self.object_store_memory))
        return (f'<div class="jp-Distkernel-cluster"><b>distkernel</b> {html.escape(self.backend)} '
                f"cluster: {self.num_workers} workers, object store {store}</div>")


def init(address_or_workers: str | int | None = None, /, *, address: str | None = None,
         num_workers: int | None = None, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: Mapping[str, float] | None = None,
         object_store_memory: int | str | None = None, namespace: str | None = None,
         runtime_env: Mapping[str, Any] | None = None, log_to_driver: bool | None = None,
         logging_level: int | str | None = None, include_dashboard: bool | None = None,
         ignore_reinit_error: bool = False, **ray_options: Any) -> ClusterInfo:
    """Start the cluster, or return the running one when the arguments agree.

    The first argument is Ray's ``address`` (``None`` or ``"local"``: the local
    engine); an int there is ``num_workers`` (``init(4)``). ``num_cpus`` is the
    pool's size (the same as ``num_workers``); ``num_gpus`` and ``resources`` are
    what tasks and actors may ask for. ``runtime_env`` takes ``env_vars`` and
    ``working_dir``. A second call with other settings raises, unless
    ``ignore_reinit_error=True``, which returns the running cluster unchanged.
    """
    if context.worker_client() is not None:
        msg = "init() cannot be called inside a task or actor: the cluster is already running"
        raise DistkernelError(msg)
    address, num_workers = _first_argument(address_or_workers, address, num_workers)
    if not _is_ray_address(address):
        _check_address(address)
    _check_ray_options(ray_options)
    _set_logging(logging_level, ray_options)
    if include_dashboard:
        logger.warning("init(include_dashboard=True): distkernel has no dashboard; the "
                       "JupyterLab side panel shows workers, tasks and the object store")
    wanted = _wanted_settings(num_workers, num_cpus, num_gpus, resources, object_store_memory,
                              namespace, runtime_env, log_to_driver)
    with _lock:
        if _engine is not None:
            return _check_compatible(wanted, ignore_reinit_error, address)
        return _start(address, wanted)


def _start(address: str | None, wanted: dict[str, Any]) -> ClusterInfo:
    """Start the engine at ``address`` with ``wanted`` (lock held) over the defaults."""
    global _engine, _info, _settings
    settings = config.ClusterSettings(
        num_workers=wanted.get("num_workers") or config.resolve_num_workers(None),
        store_memory=wanted.get("store_memory") or config.resolve_store_memory(None),
        resources=wanted.get("resources", {}), worker_env=wanted.get("worker_env", {}),
        working_dir=wanted.get("working_dir"), log_to_driver=wanted.get("log_to_driver", True),
        namespace=wanted.get("namespace") or f"anonymous-{uuid.uuid4()}")
    # Workers learn the namespace from their environment (get_runtime_context there).
    settings = dataclasses.replace(settings, worker_env={
        **settings.worker_env, NAMESPACE_VARIABLE: settings.namespace})
    engine = _engine = _new_engine(address, settings)
    _settings = settings
    _info = ClusterInfo(engine.name, settings.num_workers, settings.store_memory,
                        address or "local", engine.cluster_id, engine.store_address,
                        settings.namespace)
    for hook in list(_start_hooks):
        hook(engine)
    return _info


def _new_engine(address: str | None, settings: config.ClusterSettings) -> Engine:
    """The one place where an address picks the engine (imported on first use)."""
    if _is_ray_address(address):
        return _ray_engine(str(address), settings)
    _check_address(address)
    from distkernel.backends.local.engine import LocalEngine

    return LocalEngine(settings)


def _is_ray_address(address: Any) -> bool:
    """"ray" (a Ray of our own), "auto", "host:port" (join a running one), "ray://host:port"."""
    return isinstance(address, str) and (
        address in ("ray", "auto") or address.startswith("ray://")
        or re.fullmatch(r"[\w.-]+:\d{1,5}", address) is not None)


def _ray_engine(address: str, settings: config.ClusterSettings) -> Engine:
    try:
        from distkernel.backends.ray.engine import RayEngine
    except ImportError as exc:
        if getattr(exc, "name", "") != "ray":
            raise
        msg = (f"init(address={address!r}) runs on Ray, which is not installed here: "
               f"pip install 'distkernel[ray]' (or pip install ray), then run init again")
        raise DistkernelError(msg) from None
    return RayEngine(settings, address)


def _first_argument(first: Any, address: str | None,
                    num_workers: int | None) -> tuple[Any, int | None]:
    """Ray's positional ``address``, or our positional ``num_workers`` (an int)."""
    if first is None:
        return address, num_workers
    if isinstance(first, int) and not isinstance(first, bool):
        if num_workers is not None and num_workers != first:
            msg = (f"init({first}, num_workers={num_workers}): the first argument is the "
                   f"number of workers too; give it once")
            raise ValueError(msg)
        return address, first
    if not isinstance(first, str):
        msg = (f"init() takes an address (a string such as 'local') or a number of workers "
               f"first, got {safe_repr(first)}")
        raise TypeError(msg)
    if address is not None and address != first:
        msg = f"init({first!r}, address={address!r}): give the address once"
        raise ValueError(msg)
    return first, num_workers


def _check_address(address: Any) -> None:
    if address in LOCAL_ADDRESSES:
        return
    msg = (f"init(address={address!r}) is not a known address: use None or 'local' for the "
           f"local engine, 'ray' for a Ray of its own, 'auto' or 'host:port' to join a running "
           f"Ray cluster, 'ray://host:10001' for Ray Client")
    raise ValueError(msg)


def _check_ray_options(options: dict[str, Any]) -> None:
    """Ray's other ``init`` keywords: accepted when harmless, else refused, never unknown."""
    for name, value in options.items():
        if name in REFUSED_INIT_OPTIONS and value not in (None, False):
            msg = (f"init({name}=...) is not available on the local engine: "
                   f"{REFUSED_INIT_OPTIONS[name]}")
            raise ValueError(msg)
        if name not in IGNORED_INIT_OPTIONS and name not in REFUSED_INIT_OPTIONS:
            valid = ", ".join(["address", "num_cpus", "num_gpus", "resources",
                               "object_store_memory", "namespace", "runtime_env",
                               "log_to_driver", "logging_level", "include_dashboard",
                               "ignore_reinit_error", "num_workers",
                               *sorted(IGNORED_INIT_OPTIONS)])
            msg = f"init() got an unknown keyword {name!r}; valid keywords: {valid}"
            raise TypeError(msg)
        if name == "local_mode" and value:
            logger.warning("init(local_mode=True): tasks run in worker processes as usual")


def _set_logging(level: int | str | None, options: dict[str, Any]) -> None:
    """``logging_level`` is the level of the 'distkernel' logger; as Ray configures its own
    logger, one with no handler anywhere gets one that prints to stderr."""
    if level is None:
        return
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if isinstance(number, bool) or not isinstance(number, int):
        msg = (f"init(logging_level={safe_repr(level)}): give a logging level such as "
               f"logging.INFO or one of 'debug', 'info', 'warning', 'error', 'critical'")
        raise ValueError(msg)
    logger.setLevel(number)
    if options.get("configure_logging", True) and not logger.handlers and \
            not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            options.get("logging_format") or "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _wanted_settings(num_workers: int | None, num_cpus: int | None, num_gpus: int | None,
                     resources: Mapping[str, float] | None, memory: int | str | None,
                     namespace: str | None, runtime_env: Mapping[str, Any] | None,
                     log_to_driver: bool | None) -> dict[str, Any]:
    """The settings the caller gave, checked; what was not given is left out."""
    wanted: dict[str, Any] = {}
    workers = _pool_size(num_workers, num_cpus)
    if workers is not None:
        wanted["num_workers"] = workers
    if memory is not None:
        wanted["store_memory"] = config.resolve_store_memory(memory)
    if num_gpus is not None or resources is not None:
        wanted["resources"] = _cluster_resources(num_gpus, resources)
    if namespace is not None:
        if not isinstance(namespace, str) or not namespace:
            msg = f"init(namespace=...) must be a non-empty string, got {safe_repr(namespace)}"
            raise ValueError(msg)
        wanted["namespace"] = namespace
    if runtime_env is not None:
        wanted.update(_runtime_env(runtime_env))
    if log_to_driver is not None:
        if not isinstance(log_to_driver, bool):
            msg = f"init(log_to_driver=...) must be True or False, got {safe_repr(log_to_driver)}"
            raise TypeError(msg)
        wanted["log_to_driver"] = log_to_driver
    return wanted


def _pool_size(num_workers: int | None, num_cpus: Any) -> int | None:
    """``num_cpus`` (Ray's name) and ``num_workers`` both size the pool: one worker per CPU."""
    workers = None if num_workers is None else config.resolve_num_workers(num_workers)
    if num_cpus is None:
        return workers
    if isinstance(num_cpus, float) and num_cpus.is_integer():
        num_cpus = int(num_cpus)
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
        msg = (f"init(num_cpus=...) must be a whole number >= 1 (the local engine runs one "
               f"worker process per CPU), got {safe_repr(num_cpus)}")
        raise ValueError(msg)
    if workers is not None and workers != num_cpus:
        msg = (f"init(num_workers={workers}, num_cpus={num_cpus}) disagree: both are the "
               f"pool's size (one worker per CPU); give one of them")
        raise ValueError(msg)
    return num_cpus


def _cluster_resources(num_gpus: Any, resources: Mapping[str, float] | None) -> dict[str, float]:
    """GPUs and custom resources the cluster has: what tasks and actors may ask for."""
    found = dict(checked_resources(resources, "init()"))
    if num_gpus is not None:
        if isinstance(num_gpus, float) and num_gpus.is_integer():
            num_gpus = int(num_gpus)
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
            msg = (f"init(num_gpus=...) must be a whole number >= 0 (GPUs are handed out by "
                   f"device), got {safe_repr(num_gpus)}")
            raise ValueError(msg)
        if num_gpus:
            found["GPU"] = float(num_gpus)
    return found


def _runtime_env(runtime_env: Mapping[str, Any]) -> dict[str, Any]:
    """``runtime_env``'s ``env_vars`` and ``working_dir`` as settings; other fields need
    Ray's per-job environments and are refused with what to do instead."""
    if not isinstance(runtime_env, Mapping):
        msg = (f"init(runtime_env=...) must be a dict such as {{'env_vars': {{'A': '1'}}}}, "
               f"got {type(runtime_env).__name__}")
        raise TypeError(msg)
    supported = ", ".join(RUNTIME_ENV_FIELDS)
    for key, value in runtime_env.items():
        empty = value is None or (isinstance(value, (dict, list, tuple, str)) and not value)
        if key in RUNTIME_ENV_FIELDS or key in RUNTIME_ENV_IGNORED or empty:
            continue
        instead = RUNTIME_ENV_ALTERNATIVES.get(key, f"drop it (valid fields: {supported})")
        msg = (f"init(runtime_env={{{key!r}: ...}}) is not available on the local engine, "
               f"whose workers run in the kernel's own environment: {instead}. "
               f"runtime_env supports {supported}")
        raise ValueError(msg)
    wanted: dict[str, Any] = {}
    env_vars = runtime_env.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            msg = (f"runtime_env['env_vars'] must map names to strings, e.g. "
                   f"{{'OMP_NUM_THREADS': '1'}}, got {safe_repr(env_vars)}")
            raise TypeError(msg)
        for name, value in env_vars.items():
            _check_env_var(name, value)
        # As Ray: "${NAME}" in a value is the driver's NAME (here, the same machine's).
        wanted["worker_env"] = {k: os.path.expandvars(v) for k, v in env_vars.items()}
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None:
        path = os.fspath(working_dir) if isinstance(working_dir, (str, os.PathLike)) else None
        if not isinstance(path, str) or not os.path.isdir(path):
            msg = (f"runtime_env['working_dir'] must be an existing local folder, got "
                   f"{safe_repr(working_dir)}; the local engine does not fetch archives or "
                   f"URLs: unpack it into a folder and give its path")
            raise ValueError(msg)
        wanted["working_dir"] = os.path.abspath(path)
    return wanted


def _check_env_var(name: str, value: str) -> None:
    """What the operating system refuses in an environment variable, said before any
    worker is started."""
    if not name or "=" in name or "\0" in name:
        msg = (f"runtime_env['env_vars'] has an invalid variable name {name!r}: a name must "
               f"be non-empty, without '=' or NUL characters")
        raise ValueError(msg)
    if "\0" in value:
        msg = (f"runtime_env['env_vars'][{name!r}] contains a NUL character ('\\0'), "
               f"which an environment variable cannot hold: remove it")
        raise ValueError(msg)


def _check_compatible(wanted: dict[str, Any], ignore_reinit_error: bool,
                      address: str | None = None) -> ClusterInfo:
    """The running cluster if ``wanted`` (and ``address``, when given) agrees with it (lock
    held): another engine is never started next to the running one."""
    global _info
    assert _info is not None and _settings is not None
    assert _engine is not None
    if _engine.num_workers != _info.num_workers:  # scaled since: describe the pool as it is
        _info = dataclasses.replace(_info, num_workers=_engine.num_workers)
    current = dataclasses.replace(_settings, num_workers=_info.num_workers,
                                  worker_env=_user_env(_settings.worker_env))
    differ = [key for key, value in wanted.items() if getattr(current, key) != value]
    asked_address = "local" if address in LOCAL_ADDRESSES else address
    if address is not None and asked_address != _info.address:
        differ.append("address")
        wanted = {**wanted, "address": address}
    if not differ:
        return _info
    if ignore_reinit_error:
        logger.info("init(): distkernel is already running; ignoring the new settings of "
                    "%s (ignore_reinit_error=True)", ", ".join(differ))
        return _info
    running = {key: _info.address if key == "address" else getattr(current, key)
               for key in differ}
    asked = ", ".join(f"{key}={safe_repr(wanted[key])} (running: {safe_repr(running[key])})"
                      for key in differ)
    msg = (f"distkernel is already running with {_info.num_workers} workers and a "
           f"{config.format_bytes(_info.object_store_memory)} object store, and other "
           f"settings than asked: {asked}. Call shutdown() first to start it with other "
           f"settings, or pass ignore_reinit_error=True to keep the running one")
    raise DistkernelError(msg)


def _user_env(worker_env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in worker_env.items() if k != NAMESPACE_VARIABLE}


def is_initialized() -> bool:
    """True once a cluster runs (always inside a task or actor, as in Ray)."""
    return _engine is not None or context.worker_client() is not None


def shutdown() -> None:
    """Stop every worker and free every segment; safe to call twice.

    Holds the runtime's lock until the cluster is down, so that an API call made in
    another thread meanwhile waits and then starts a new cluster (as any call after a
    shutdown does) instead of racing the old one's clean-up.
    """
    global _engine, _info, _settings
    with _lock:
        engine = _engine
        try:
            if engine is not None:
                engine.shutdown()
        finally:
            _engine, _info, _settings = None, None, None
            refs.stop_waiting_threads()


def restart() -> ClusterInfo:
    """A new cluster with the running one's settings (and its current size)."""
    with _lock:
        settings, info = _settings, _info
        size = _engine.num_workers if _engine is not None else None
        shutdown()
        if settings is None or info is None:
            return init()
        return _start(info.address, {"num_workers": size, "store_memory": settings.store_memory,
                       "resources": settings.resources,
                       "worker_env": _user_env(settings.worker_env),
                       "working_dir": settings.working_dir,
                       "log_to_driver": settings.log_to_driver,
                       "namespace": settings.namespace})


# -- where the caller runs ---------------------------------------------------------------------

def current_task_id() -> str | None:
    """The id of the task or actor call running in this thread; None in the driver."""
    client = context.worker_client()
    return (client.task_id() or None) if client is not None else None


def current_actor_id() -> str | None:
    """The id of the actor this process hosts; None in the driver and in tasks (and where
    the engine does not tell)."""
    client = context.worker_client()
    return (client.actor_id or None) if client is not None else None


def in_actor() -> bool:
    """Whether the caller runs in an actor's process (in one of its methods)."""
    return current_actor_id() is not None


def engine() -> Engine:
    """The driver's engine, started with defaults on first use."""
    current = _engine
    if current is None or current.closing:  # none, or being shut down: wait, then start
        with _lock:
            if _engine is None:
                init()
            current = _engine
    assert current is not None
    return current


def current_engine() -> Engine | None:
    """The running engine, or None (never starts one)."""
    return _engine


def settings() -> config.ClusterSettings | None:
    """What the running cluster was started with (None in a worker or before ``init``)."""
    return _settings


def add_start_hook(hook: Callable[[Engine], None]) -> None:
    """Call ``hook(engine)`` for every cluster started from now on (the notebook front)."""
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def remove_start_hook(hook: Callable[[Engine], None]) -> None:
    if hook in _start_hooks:
        _start_hooks.remove(hook)


def client() -> Client:
    """Where API calls go: the driver link inside a worker, else the engine."""
    return context.worker_client() or engine()


def cluster_info() -> ClusterInfo | None:
    return _info


atexit.register(shutdown)
