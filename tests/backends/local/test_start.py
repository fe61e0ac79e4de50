"""Starting the local engine when the system refuses a worker process: init raises a
clear error and leaves nothing behind (the leak fixture checks processes, segments,
threads and file descriptors)."""

from __future__ import annotations

import errno
import subprocess

import pytest

import distkernel as dk
from distkernel.core.exceptions import DistkernelError


def test_a_worker_that_cannot_be_started_fails_init_cleanly(monkeypatch):
    real_popen = subprocess.Popen
    started: list[subprocess.Popen] = []

    def second_one_fails(*args, **kwargs):
        if started:  # the first worker starts; the system refuses the second
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", second_one_fails)
    with pytest.raises(DistkernelError, match="could not start its worker processes") as info:
        dk.init(2)
    assert "Resource temporarily unavailable" in str(info.value)
    assert started and started[0].wait(timeout=10) is not None  # the first one was stopped
    monkeypatch.undo()
    assert dk.get(dk.put(41)) == 41  # and the next init works
