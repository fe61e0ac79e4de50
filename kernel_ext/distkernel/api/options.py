"""The options of ``@remote``, ``.options(...)`` and ``init(resources=...)``, checked at the
boundary: unknown names list the valid ones, Ray options that need a multi-node cluster
are refused with what to do instead."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from distkernel.core import config
from distkernel.core.exceptions import safe_repr
from distkernel.core.protocol import TaskOptions
from distkernel.engine.resources import is_strategy_object, local_strategy_error
from distkernel.store.serialization import dumps

#: Options ``@remote(...)`` and ``.options(...)`` take for functions. ``memory`` is accepted
#: and not enforced (nothing is reserved); ``enable_task_events`` has no effect (the
#: timeline records every task).
FUNCTION_OPTIONS = ("num_returns", "max_retries", "num_cpus", "num_gpus", "name", "memory",
                    "resources", "retry_exceptions", "scheduling_strategy", "runtime_env",
                    "enable_task_events")

#: Ray options that rest on a multi-node cluster: refused with what to do instead.
REFUSED_OPTIONS = {
    "placement_group": "placement groups reserve resources across the nodes of a Ray "
                       "cluster and the local engine has one node; give num_cpus, num_gpus "
                       "or resources to the task or actor itself",
    "accelerator_type": "the local engine does not tell GPU models apart; ask for num_gpus",
    "label_selector": "node labels choose among the nodes of a Ray cluster and the local "
                      "engine has one node; drop the option",
    "max_calls": "the local engine reuses its workers for every task; drop the option (to "
                 "give a GPU's memory back, free it at the end of the task)",
}
for _name in ("placement_group_bundle_index", "placement_group_capture_child_tasks"):
    REFUSED_OPTIONS[_name] = REFUSED_OPTIONS["placement_group"]
for _name in ("fallback_strategy", "_labels"):
    REFUSED_OPTIONS[_name] = REFUSED_OPTIONS["label_selector"]

#: ``scheduling_strategy`` values the local engine takes (one node: both mean the same).
SCHEDULING_STRATEGIES = (None, "DEFAULT", "SPREAD")


def check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """Unknown names and bad values fail here, with the valid choices (habit 5)."""
    unknown = sorted(set(options) - set(allowed))
    refused = [name for name in unknown if name in REFUSED_OPTIONS]
    if refused:
        name = refused[0]
        msg = f"{what}: the option {name} is not available on the local engine: " \
              f"{REFUSED_OPTIONS[name]}"
        raise ValueError(msg)
    if unknown:
        msg = (f"{what} got unknown option(s) {', '.join(unknown)}; "
               f"valid options: {', '.join(allowed)}")
        raise TypeError(msg)
    for key in ("num_returns", "max_retries"):
        value = options.get(key)
        if value is None:
            continue
        minimum = 1 if key == "num_returns" else -1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            msg = f"{what}: {key} must be an int >= {minimum}, got {value!r}"
            raise ValueError(msg)
    for key in ("num_cpus", "num_gpus", "memory"):
        check_amount(options.get(key), key, what)
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        msg = (f"{what}: num_gpus must be below 1 (a share of one GPU) or a whole number, "
               f"got {gpus!r}")
        raise ValueError(msg)
    checked_resources(options.get("resources"), what)
    _check_placement(options, what, strategies_travel=allowed is FUNCTION_OPTIONS)


def check_amount(value: Any, key: str, what: str) -> None:
    """A resource amount: None (the default) or a finite number >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or value < 0:
        msg = f"{what}: {key} must be a number >= 0, got {safe_repr(value)}"
        raise ValueError(msg)


def checked_resources(resources: Any, what: str) -> tuple[tuple[str, float], ...]:
    """A ``resources={name: amount}`` dict as sorted ``(name, amount)`` pairs, checked.

    CPUs and GPUs have keywords of their own (as in Ray), so they are refused here.
    """
    if resources is None:
        return ()
    if not isinstance(resources, Mapping):
        msg = (f"{what}: resources must be a dict of resource name to amount, e.g. "
               f"resources={{'db': 1}}, got {type(resources).__name__}")
        raise TypeError(msg)
    for name, amount in resources.items():
        if name in ("CPU", "GPU"):
            keyword = "num_cpus" if name == "CPU" else "num_gpus"
            msg = (f"{what}: resources={{{name!r}: ...}} is not how {name}s are asked for; "
                   f"use {keyword}=... (resources is for custom names)")
            raise ValueError(msg)
        if not isinstance(name, str) or not name:
            msg = f"{what}: resource names must be non-empty strings, got {safe_repr(name)}"
            raise TypeError(msg)
        check_amount(amount, f"resources[{name!r}]", what)
    return tuple(sorted((name, float(amount)) for name, amount in resources.items()))


def _check_placement(options: dict[str, Any], what: str, *,
                     strategies_travel: bool = False) -> None:
    """``scheduling_strategy`` and a per-call ``runtime_env``: what one node can honour.

    A function's strategy object (Ray's ``NodeAffinitySchedulingStrategy`` ...) travels
    with its tasks: Ray honours it, the local engine refuses it when it is called."""
    strategy = options.get("scheduling_strategy")
    if strategies_travel and is_strategy_object(strategy):
        pass
    elif not isinstance(strategy, (str, type(None))) or strategy not in SCHEDULING_STRATEGIES:
        raise ValueError(local_strategy_error(strategy, what))
    runtime_env = options.get("runtime_env")
    if runtime_env:  # None and {} ask for nothing
        msg = (f"{what}: runtime_env per task or actor is not available on the local engine, "
               f"whose workers all share one environment; give it to init(runtime_env=...) "
               f"(env_vars and working_dir are supported)")
        raise ValueError(msg)
    enable_events = options.get("enable_task_events")
    if enable_events is not None and not isinstance(enable_events, bool):
        msg = f"{what}: enable_task_events must be True or False, got {safe_repr(enable_events)}"
        raise TypeError(msg)


def retry_exceptions_field(value: Any, what: str) -> bool | bytes:
    """``retry_exceptions`` as TaskOptions carries it: a bool, or the pickled tuple of
    exception classes to retry on (the driver, which has the classes, checks them)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (list, tuple)) and all(
            isinstance(c, type) and issubclass(c, Exception) for c in value):
        return dumps(tuple(value)) if value else False
    msg = (f"{what}: retry_exceptions must be True, False or a list of exception classes "
           f"(e.g. [ConnectionError]), got {safe_repr(value)}")
    raise TypeError(msg)


def task_options(options: dict[str, Any], default_name: str, what: str) -> TaskOptions:
    """The checked options as the engine takes them."""
    max_retries = options.get("max_retries")
    max_retries = config.DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    num_cpus = options.get("num_cpus")
    return TaskOptions(num_returns=options.get("num_returns") or 1,
                       max_retries=1_000_000 if max_retries == -1 else max_retries,
                       num_cpus=1 if num_cpus is None else num_cpus,
                       name=options.get("name") or default_name,
                       num_gpus=options.get("num_gpus") or 0,
                       resources=checked_resources(options.get("resources"), what),
                       retry_exceptions=retry_exceptions_field(
                           options.get("retry_exceptions"), what),
                       scheduling_strategy=options.get("scheduling_strategy"))
