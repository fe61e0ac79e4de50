"""Our task and actor options in Ray's names, as ``.options(...)`` and ``ray.remote`` take
them (``core.protocol`` holds ours)."""

from __future__ import annotations

from typing import Any

from distkernel.core.protocol import ActorOptions, TaskOptions
from distkernel.engine import specs


def task_options(options: TaskOptions, name: str) -> dict[str, Any]:
    """Our task options as Ray's ``.options(...)``."""
    ray_options: dict[str, Any] = {"num_returns": options.num_returns,
                                   "max_retries": options.max_retries,
                                   "num_cpus": options.num_cpus, "num_gpus": options.num_gpus,
                                   "name": options.name or name}
    if options.resources:
        ray_options["resources"] = dict(options.resources)
    if options.retry_exceptions is True:
        ray_options["retry_exceptions"] = True
    elif options.retry_exceptions:  # the classes, pickled: Ray takes them as a list
        ray_options["retry_exceptions"] = list(specs.exception_kinds(options.retry_exceptions))
    if options.scheduling_strategy is not None:
        ray_options["scheduling_strategy"] = options.scheduling_strategy
    return ray_options


def actor_options(options: ActorOptions) -> dict[str, Any]:
    """Our actor options as Ray's ``.options(...)``."""
    resources = dict(options.resources)
    ray_options: dict[str, Any] = {"max_restarts": options.max_restarts,
                                   "max_task_retries": options.max_task_retries,
                                   "num_cpus": resources.pop("CPU", 0),
                                   "num_gpus": resources.pop("GPU", 0),
                                   "max_concurrency": max(options.max_concurrency, 1)}
    if resources:
        ray_options["resources"] = resources
    if options.name:
        ray_options.update(name=options.name, get_if_exists=options.get_if_exists)
        if options.namespace:
            ray_options["namespace"] = options.namespace
    if options.detached:
        ray_options["lifetime"] = "detached"
    return ray_options
