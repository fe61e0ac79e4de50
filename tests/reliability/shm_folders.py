"""Small shared-memory folders for tests: a tmpfs of a given size, mounted for one test.

Mounting needs root (or CAP_SYS_ADMIN); tests that need one are skipped, with the
reason, where that is not allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def mounted_tmpfs(folder: str, size_mb: int) -> Iterator[str]:
    """``folder`` as a tmpfs of ``size_mb`` MiB for the duration; skips the test if the
    machine does not let us mount one."""
    os.makedirs(folder, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0777",
                           "tmpfs", folder], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size_mb} MiB tmpfs here (needs root): "
                    f"{done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", folder], capture_output=True)


def used_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).used


def shm_env(folder: str, **extra: str) -> dict[str, str]:
    """The environment of a driver whose store lives in ``folder``."""
    return dict(os.environ, DISTKERNEL_SHM_DIR=folder, **extra)
