"""Finding and removing what a dead driver left behind.

Segments are named ``distkernel-<driver pid>-<object id>``. A driver removes its
own at shutdown; a worker that sees its driver die removes the driver's (SIGKILL
leaves nobody else to do it); and every start sweeps segments of drivers that
no longer run, in case even that did not happen.
"""

from __future__ import annotations

import os

import psutil

from distkernel import config


def _driver_pid(name: str) -> int | None:
    if not name.startswith(config.SEGMENT_PREFIX):
        return None
    head = name[len(config.SEGMENT_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def segments_of(driver_pid: int) -> list[str]:
    """Names of the segments a driver made (or that workers made on its behalf)."""
    prefix = f"{config.SEGMENT_PREFIX}{driver_pid}-"
    try:
        return [n for n in os.listdir(config.SHM_DIR) if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def remove_segments_of(driver_pid: int) -> int:
    """Unlink every segment of ``driver_pid``; returns how many were removed."""
    removed = 0
    for name in segments_of(driver_pid):
        try:
            os.unlink(os.path.join(config.SHM_DIR, name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def sweep_dead_drivers() -> int:
    """Remove segments of drivers that are no longer running, if they are ours to remove."""
    try:
        names = os.listdir(config.SHM_DIR)
    except FileNotFoundError:
        return 0
    uid = os.getuid()
    removed = 0
    for name in names:
        pid = _driver_pid(name)
        if pid is None or psutil.pid_exists(pid):
            continue
        path = os.path.join(config.SHM_DIR, name)
        try:
            if os.stat(path).st_uid != uid:
                continue
            os.unlink(path)
            removed += 1
        except (FileNotFoundError, PermissionError):
            pass
    return removed
