"""The cluster's resources, as Ray counts them: CPUs, GPUs and custom names.

The pool's CPUs are its size (``init(num_cpus=...)``); GPUs and custom resources are
what ``init`` was told about. A task holds what it asks for (one CPU by default) from
the moment it is sent to a worker until it finishes, so a program that limits its own
parallelism with ``num_cpus=2`` or ``resources={"db": 1}`` behaves as on Ray. Whole
GPUs are handed out by id (the task sees them in ``CUDA_VISIBLE_DEVICES``); a fraction
of one shares a GPU with others. Pure bookkeeping: the scheduler calls it, nothing here
does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from distkernel.core.exceptions import safe_repr

Needs = Mapping[str, float]

#: What a task asks for when it names nothing.
ONE_CPU: Needs = {"CPU": 1.0}
_EPSILON = 1e-9


def needs_of(resources: Iterable[tuple[str, float]]) -> Needs:
    """A spec's ``resources`` tuple as a mapping; the empty tuple is one CPU (the very
    mapping ``ONE_CPU``, which the hot paths recognise by identity)."""
    if not resources:
        return ONE_CPU
    needs = dict(resources)
    return needs if needs else ONE_CPU


class Resources:
    """Capacity and use of each resource; GPUs also by device."""

    def __init__(self, num_cpus: float, others: Mapping[str, float] | None = None) -> None:
        self.capacity: dict[str, float] = {"CPU": float(num_cpus)}
        for name, amount in (others or {}).items():
            self.capacity[name] = float(amount)
        self.in_use: dict[str, float] = {}
        self._gpus = [1.0] * int(self.capacity.get("GPU", 0))  # share left on each device

    def set_cpus(self, num_cpus: float) -> None:
        """The pool was resized: so were its CPUs (tasks running keep theirs)."""
        self.capacity["CPU"] = float(num_cpus)

    def infeasible(self, needs: Needs) -> str | None:
        """Why ``needs`` can never be met here, or None if it can once others finish."""
        for name, amount in needs.items():
            if amount > self.capacity.get(name, 0.0) + _EPSILON:
                have = self.capacity.get(name, 0.0)
                what = "CPUs" if name == "CPU" else "GPUs" if name == "GPU" else repr(name)
                return (f"it needs {amount:g} {what} and the cluster has {have:g}" +
                        (f" (give init(resources={{{name!r}: ...}}))"
                         if name not in ("CPU", "GPU") else
                         f" (start it with init(num_{name.lower()}s=...))"))
        gpus = needs.get("GPU", 0.0)
        if gpus > 1 and gpus != int(gpus):
            return f"a fraction of a GPU must be below 1, or whole GPUs (got {gpus:g})"
        return None

    def fits(self, needs: Needs) -> bool:
        if needs is ONE_CPU:  # nearly every task: no loop (this runs for every dispatch)
            return self.in_use.get("CPU", 0.0) + 1.0 <= self.capacity["CPU"] + _EPSILON
        for name, amount in needs.items():
            if amount and self.in_use.get(name, 0.0) + amount > \
                    self.capacity.get(name, 0.0) + _EPSILON:
                return False
        gpus = needs.get("GPU", 0.0)
        return not gpus or self._gpu_choice(gpus) is not None

    def acquire(self, needs: Needs) -> tuple[int, ...]:
        """Take ``needs`` (which must fit); the GPU devices it was given."""
        if needs is ONE_CPU:
            self.in_use["CPU"] = self.in_use.get("CPU", 0.0) + 1.0
            return ()
        for name, amount in needs.items():
            if amount:
                self.in_use[name] = self.in_use.get(name, 0.0) + amount
        gpus = needs.get("GPU", 0.0)
        if not gpus:
            return ()
        devices = self._gpu_choice(gpus) or ()
        share = gpus if gpus < 1 else 1.0
        for device in devices:
            self._gpus[device] -= share
        return devices

    def release(self, needs: Needs, devices: tuple[int, ...] = ()) -> None:
        if needs is ONE_CPU:
            left = self.in_use["CPU"] - 1.0
            self.in_use["CPU"] = left if left > _EPSILON else 0.0
            return
        for name, amount in needs.items():
            if amount:
                left = self.in_use.get(name, 0.0) - amount
                self.in_use[name] = left if left > _EPSILON else 0.0
        gpus = needs.get("GPU", 0.0)
        share = gpus if gpus < 1 else 1.0
        for device in devices:
            self._gpus[device] = min(1.0, self._gpus[device] + share)

    def available(self) -> dict[str, float]:
        return {name: max(0.0, amount - self.in_use.get(name, 0.0))
                for name, amount in self.capacity.items()}

    def _gpu_choice(self, gpus: float) -> tuple[int, ...] | None:
        """Devices for a request: ``n`` whole free ones, or one with room for a fraction."""
        if gpus < 1:
            for device, left in enumerate(self._gpus):
                if left + _EPSILON >= gpus:
                    return (device,)
            return None
        free = [device for device, left in enumerate(self._gpus) if left >= 1 - _EPSILON]
        count = int(gpus)
        return tuple(free[:count]) if len(free) >= count else None


def is_strategy_object(strategy: Any) -> bool:
    """One of Ray's scheduling strategy classes (by name: Ray need not be installed)."""
    return type(strategy).__name__.endswith("SchedulingStrategy")


def local_strategy_error(strategy: Any, what: str) -> str:
    """Why the local engine, one node, cannot honour a ``scheduling_strategy``."""
    return (f"{what}: scheduling_strategy={safe_repr(strategy)} cannot be honoured by the "
            f"local engine, which has one node; use 'DEFAULT' or 'SPREAD' (both mean any "
            f"free worker), drop the option, or run on a Ray cluster (init(address=...))")
