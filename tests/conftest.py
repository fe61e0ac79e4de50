"""Shared fixtures: a fresh cluster per test, and a check that nothing leaks.

Every test ends with no worker process, no shared-memory segment, no thread
and no file descriptor of distkernel's left over in this process: the autouse
``no_leaks`` fixture shuts distkernel down and fails the test otherwise.
"""

from __future__ import annotations

import gc
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import distkernel as dk
from distkernel.core import config
from distkernel.store import reaper

# Started in the background by a shell without job control, the run (and every process
# it starts) would ignore SIGINT: the tests of Ctrl-C need it as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def our_workers() -> list[psutil.Process]:
    """Worker processes started by this test process (and still running)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if "distkernel.engine.worker" in command and child.status() != "zombie":
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def our_segments() -> list[str]:
    return reaper.segments_of(os.getpid())


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """For tests only: wait for something another process does (a process exiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def kill_driver_after_first_line(tmp_path, source: str) -> tuple[int, str]:
    """Run ``source`` as a driver script, read its first printed line, then SIGKILL it."""
    script = tmp_path / "driver.py"
    script.write_text(source)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        prefix = f"{config.SEGMENT_PREFIX}{driver.pid}-"
        assert any(n.startswith(prefix) for n in os.listdir(config.SHM_DIR)), line
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    return driver.pid, line


def run_driver_script(tmp_path, source: str, *, timeout: float = 60,
                      env: dict[str, str] | None = None,
                      prelude: str = "") -> subprocess.CompletedProcess:
    """Run ``source`` (after ``prelude``) as a driver script: its definitions live in
    ``__main__``, as in a notebook. Fails the test with the script's output if it exits
    non-zero."""
    script = tmp_path / "driver_script.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent(source))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def segments_left_by(pid: int) -> list[str]:
    prefix = f"{config.SEGMENT_PREFIX}{pid}-"
    return [n for n in os.listdir(config.SHM_DIR) if n.startswith(prefix)]


def is_ours(thread: threading.Thread) -> bool:
    """A thread distkernel started: named ``distkernel-*`` (I/O thread, outbox flushers,
    reclaimer, await pool), or running a function of the package (``threading.Timer``s)."""
    if thread.name.startswith("distkernel"):
        return True
    target = getattr(thread, "_target", None) or getattr(thread, "function", None)
    return (getattr(target, "__module__", None) or "").startswith("distkernel")


def our_new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and is_ours(t)]


def open_fds() -> dict[int, str]:
    """This process's descriptors and what each refers to (``socket:[...]``, a path ...)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed already
            pass
    return found


def _peer_gone(fd: int) -> bool:
    """A Unix socket whose other end is closed: nothing can ever come through it."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with probe:
        if probe.family != socket.AF_UNIX:
            return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))


def _watched_by(epoll_fd: int) -> list[int]:
    """The descriptors an epoll instance watches (its ``tfd`` lines in fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
            return [int(line.split()[1]) for line in info if line.startswith("tfd:")]
    except (FileNotFoundError, ValueError, IndexError):
        return []


def _our_file(target: str) -> bool:
    """Segments, spill files and the lock (``distkernel-…``, ``.distkernel-….lock``); the
    lock is made unnamed first (``O_TMPFILE``), and its descriptor keeps that ``#…`` name."""
    folder, name = os.path.split(target)
    return bool(re.match(r"\.?distkernel-", name) or re.search(r"/distkernel-[^/]*-spill-", target)
                or (folder == config.SHM_DIR and name.startswith("#")))


def is_our_fd(fd: int, target: str, open_now: dict[int, str]) -> bool:
    """A descriptor of the kinds the driver side of distkernel opens.

    Pidfds (worker sentinels), pipes (the reader's wake-up pipe), the control pages'
    memfds, files of ours in the shared-memory and spill folders, and sockets to workers:
    after shutdown every worker is gone, so one of ours has its other end closed. Libraries
    the tests use also open sockets and epolls (jupyter_client's event loop, zmq): a live
    socket pair, an eventfd or an epoll watching those is theirs. An epoll is ours when it
    watches only descriptors of ours (the reader's selector), or nothing.
    """
    if target.startswith(("anon_inode:[pidfd]", "pipe:", "/memfd:distkernel")) or \
            _our_file(target):
        return True
    if target.startswith("socket:"):
        return _peer_gone(fd)
    if target == "anon_inode:[eventpoll]":
        return all(w in open_now and w != fd and is_our_fd(w, open_now[w], {})
                   for w in _watched_by(fd))
    return False


def our_new_fds(before: dict[int, str]) -> dict[int, str]:
    """Descriptors of ours opened since ``before`` and still open (a reused number with
    another target counts as new)."""
    now = open_fds()
    left = {fd: target for fd, target in now.items() if before.get(fd) != target}
    return {fd: target for fd, target in left.items() if is_our_fd(fd, target, now)}


@pytest.fixture(autouse=True)
def no_leaks():
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    yield
    dk.shutdown()
    assert wait_until(lambda: not our_workers(), timeout=10), \
        f"worker processes left behind: {[p.pid for p in our_workers()]}"
    assert not our_segments(), f"shared-memory segments left behind: {our_segments()}"
    # What a test left in a reference cycle is freed first (an exception's traceback keeps
    # the test's frame, and with it arrays mapping shared memory): what is left after that
    # is held by something alive.
    gc.collect()
    # Threads that were told to stop (an outbox flusher whose socket closed) end on
    # their own a moment later: give them that moment.
    assert wait_until(lambda: not our_new_threads(threads_before), timeout=5), \
        f"threads left running after shutdown(): {our_new_threads(threads_before)}"
    assert wait_until(lambda: not our_new_fds(fds_before), timeout=2), \
        f"file descriptors left open after shutdown(): {our_new_fds(fds_before)}"


@pytest.fixture
def cluster():
    """A fresh 2-worker local cluster."""
    info = dk.init(2)
    yield info
    dk.shutdown()


@pytest.fixture
def small_store():
    """A cluster whose store holds 8 MiB, to reach its limit quickly."""
    info = dk.init(2, object_store_memory=8 * 1024 * 1024)
    yield info
    dk.shutdown()


def shm_dir() -> str:
    return config.SHM_DIR
