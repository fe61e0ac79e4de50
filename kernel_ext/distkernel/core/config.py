"""Defaults and the parsing of user-given sizes and counts."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil


def _microseconds(variable: str, default: int) -> float:
    """Seconds from an environment variable given in microseconds, else the default."""
    text = os.environ.get(variable, "")
    try:
        return max(0, int(text)) * 1e-6 if text else default * 1e-6
    except ValueError:
        msg = f"{variable}={text!r} must be a whole number of microseconds, like 250 (0: off)"
        raise ValueError(msg) from None


#: Serialized values below this size travel inline in messages; larger ones go to shared memory.
INLINE_THRESHOLD = 100 * 1024
#: Where shared-memory segments live (tmpfs on Linux).
SHM_DIR = os.environ.get("DISTKERNEL_SHM_DIR", "/dev/shm")
#: Every file name starts with this, then the driver pid: ``distkernel-<pid>-...`` (``reaper``).
SEGMENT_PREFIX = "distkernel-"
#: How many finished task records ``timeline()`` keeps.
TIMELINE_CAPACITY = 10_000
#: Default retries of a task whose worker died.
DEFAULT_MAX_RETRIES = 3
#: How many extra workers may be started while workers are blocked in ``get`` on child tasks.
MAX_EXTRA_WORKERS = 32
#: How long an idle worker polls its socket before it sleeps (seconds): the next task of a
#: tight loop arrives within this, and is then read without a process wake-up. 0 turns
#: polling off (for machines where every CPU cycle is shared).
WORKER_SPIN = _microseconds("DISTKERNEL_WORKER_SPIN_US", 300)
#: How long a caller waiting in ``get`` / ``wait`` reads the workers' sockets itself, polling,
#: before it sleeps and leaves them to the I/O thread (seconds).
DRIVER_SPIN = _microseconds("DISTKERNEL_DRIVER_SPIN_US", 250)
#: How long the I/O thread leaves the sockets to callers after one got its result there (seconds).
READER_GRACE = 2e-3
#: Spilling stops while the spill folder's disk has less than this share of its size free.
SPILL_DISK_RESERVE = 0.05
#: Share of total RAM and of free ``/dev/shm`` the store takes by default.
RAM_SHARE = 0.3
SHM_SHARE = 0.8

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
          "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str, *, what: str = "object_store_memory") -> int:
    """Bytes from an int or a string like ``"2GB"``, ``"512 MiB"`` or ``"1e9"``."""
    if isinstance(value, bool):
        msg = f"{what} must be a number of bytes or a string like '2GB', got {value!r}"
        raise TypeError(msg)
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"{what}={value!r} is not a size: give a finite number of bytes, or a text like '2GB'"
        raise ValueError(msg)
    if isinstance(value, (int, float)):
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            try:
                size = int(float(value))
            except (ValueError, OverflowError):
                msg = (f"{what}={value!r} is not a size: use a number of bytes or a string "
                       f"like '512MB', '2GB' or '1GiB'")
                raise ValueError(msg) from None
        else:
            size = int(float(match.group(1)) * _UNITS[unit])
    else:
        msg = f"{what} must be a number of bytes or a string like '2GB', got {type(value).__name__}"
        raise TypeError(msg)
    if size <= 0:
        msg = f"{what} must be positive, got {value!r}"
        raise ValueError(msg)
    return size


def resolve_store_memory(value: int | float | str | None) -> int:
    """The store's capacity in bytes: the default share, or a size the user gave, checked.

    A capacity beyond the machine's RAM cannot be meant (``"1e30"``), so it is refused.
    """
    if value is None:
        return default_store_memory()
    size = parse_size(value)
    total = psutil.virtual_memory().total
    if size > total:
        msg = (f"object_store_memory={value!r} ({format_bytes(size)}) is more than this "
               f"machine's memory ({format_bytes(total)}); give at most that, e.g. "
               f"object_store_memory='{format_bytes(total * RAM_SHARE).replace(' ', '')}'")
        raise ValueError(msg)
    return size


def default_store_memory() -> int:
    """A safe share of RAM and of free shared memory, so a big store cannot starve the machine."""
    total = psutil.virtual_memory().total
    try:
        shm_free = psutil.disk_usage(SHM_DIR).free
    except OSError:
        shm_free = total
    return int(min(total * RAM_SHARE, shm_free * SHM_SHARE))


def resolve_num_workers(num_workers: int | None) -> int:
    """The CPU count by default; otherwise a positive int, checked."""
    if num_workers is None:
        return os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        msg = f"num_workers must be a positive int, got {num_workers!r}"
        raise TypeError(msg)
    if num_workers < 1:
        msg = f"num_workers must be at least 1, got {num_workers}"
        raise ValueError(msg)
    return num_workers


def format_bytes(size: float) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes as people read them, in binary units with one
    decimal, rounded before the unit is picked (1048575 B is '1.0 MiB', not '1024.0 KiB')."""
    if size < 0:
        msg = f"a byte count must be >= 0, got {size!r}"
        raise ValueError(msg)
    if size < 1024:
        return f"{size:.0f} B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, power = float(size), 0
    while round(value, 1) >= 1024 and power < len(units) - 1:
        value, power = value / 1024, power + 1
    return f"{value:.1f} {units[power]}"


def spill_base() -> str:
    """The folder in which a cluster makes its private spill folder (``DISTKERNEL_SPILL_DIR``)."""
    return os.environ.get("DISTKERNEL_SPILL_DIR") or tempfile.gettempdir()


def spill_limit() -> int | None:
    """At most this many bytes spilled (``DISTKERNEL_SPILL_LIMIT``, ``0``: never spill);
    None: as much as the disk holds, keeping ``SPILL_DISK_RESERVE`` of it free."""
    text = os.environ.get("DISTKERNEL_SPILL_LIMIT", "").strip()
    if not text:
        return None
    if text == "0":
        return 0
    return parse_size(text, what="DISTKERNEL_SPILL_LIMIT")


@dataclass(frozen=True)
class ClusterSettings:
    """What a cluster is started with (``init``'s arguments, checked)."""

    num_workers: int  # also the cluster's CPUs: a task takes num_cpus of them
    store_memory: int
    resources: Mapping[str, float] = field(default_factory=dict)  # "GPU" and custom names
    worker_env: Mapping[str, str] = field(default_factory=dict)  # runtime_env env_vars
    working_dir: str | None = None  # runtime_env working_dir: workers start there
    log_to_driver: bool = True  # task output shown in the driver
    namespace: str = ""  # of named actors, when a call names none
