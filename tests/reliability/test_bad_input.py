"""Odd but legal user code and bad arguments: each gives a result or a clear error, and
the pool keeps working. Every test here first reproduced a failure seen from outside."""

from __future__ import annotations

import signal
import sys
import time

import pytest

import distkernel as dk
from tests.conftest import run_driver_script


@dk.remote
def fib(n):
    """Ray's recursive example, in an importable module (pickled by reference)."""
    return n if n < 2 else sum(dk.get([fib.remote(n - 1), fib.remote(n - 2)]))


@dk.remote
def slow(seconds):
    time.sleep(seconds)
    return "finished"


@dk.remote
def pid():
    import os

    return os.getpid()


def worker_pids() -> set[int]:
    return {w["pid"] for w in dk.status()["workers"]}


def test_a_remote_function_that_calls_itself_runs_from_a_module(cluster):
    assert dk.get(fib.remote(7)) == 13


def test_a_remote_function_that_calls_itself_runs_from_a_closure(cluster):
    def make():
        @dk.remote
        def fact(n):
            return 1 if n <= 1 else n * dk.get(fact.remote(n - 1))

        return fact

    assert dk.get(make().remote(6)) == 720


def test_a_notebook_function_that_calls_itself_and_an_actor_that_starts_itself(tmp_path):
    done = run_driver_script(tmp_path, """
        import distkernel as dk
        dk.init(2)

        @dk.remote
        def fib(n):
            return n if n < 2 else dk.get(fib.remote(n - 1)) + dk.get(fib.remote(n - 2))

        @dk.remote
        class Node:
            def __init__(self, depth):
                self.depth = depth

            def height(self):
                if self.depth == 0:
                    return 0
                return 1 + dk.get(Node.remote(self.depth - 1).height.remote())

        print(dk.get(fib.remote(6)), dk.get(Node.remote(2).height.remote()))
    """)
    assert done.stdout.split() == ["8", "2"]


def test_notebook_classes_with_slots_travel_every_way(tmp_path):
    done = run_driver_script(tmp_path, """
        import distkernel as dk
        dk.init(2)

        class Slots:
            __slots__ = ("a", "b")
            def __init__(self, a, b):
                self.a, self.b = a, b

        class OneSlot:
            __slots__ = "only"
            def __init__(self):
                self.only = "one"

        class Mixed(Slots):  # slots in the base, a __dict__ here
            def __init__(self):
                super().__init__(1, 2)
                self.extra = 3

        @dk.remote
        def make():
            return Slots(1, 2), OneSlot(), Mixed()

        @dk.remote
        def echo(value):
            return value

        made, one, mixed = dk.get(make.remote())
        echoed = dk.get(echo.remote(Slots(3, 4)))
        stored = dk.get(dk.put(Slots(5, 6)))
        print(made.a, made.b, one.only, mixed.a, mixed.extra, echoed.b, stored.a)
    """)
    assert done.stdout.split() == ["1", "2", "one", "1", "3", "4", "5"]


class BrokenStr(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


def raise_broken_str():
    raise BrokenStr


def test_an_exception_whose_str_raises_is_a_task_error_at_once(cluster):
    task = dk.remote(max_retries=3)(raise_broken_str)
    dk.get(pid.remote())
    before = worker_pids()
    with pytest.raises(BrokenStr) as caught:
        dk.get(task.remote(), timeout=30)
    assert isinstance(caught.value, dk.TaskError)
    assert "BrokenStr" in str(caught.value)
    assert worker_pids() == before  # no worker died, so nothing was retried
    assert [r.name for r in dk.timeline()].count("raise_broken_str") == 1


def test_an_actor_survives_an_exception_whose_str_raises(cluster):
    @dk.remote
    class Actor:
        def fail(self):
            raise BrokenStr

        def ping(self):
            return "pong"

    actor = Actor.remote()
    with pytest.raises(dk.TaskError):
        dk.get(actor.fail.remote(), timeout=30)
    assert dk.get(actor.ping.remote(), timeout=30) == "pong"


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def install_own_sigint_handler():
    signal.signal(signal.SIGINT, lambda *_: None)


def replace_stdout():
    import io

    sys.stdout = io.StringIO()
    sys.stderr.close()


@pytest.mark.parametrize("meddle", [ignore_sigint, install_own_sigint_handler, replace_stdout])
def test_what_a_task_changes_in_its_process_does_not_reach_later_tasks(capfd, meddle):
    dk.init(1)
    dk.get(dk.remote(meddle).remote(), timeout=30)
    running = slow.remote(30)
    time.sleep(0.3)
    dk.cancel(running)
    with pytest.raises(dk.TaskCancelledError):
        dk.get(running, timeout=5)

    @dk.remote
    def say():
        print("to stdout")
        print("to stderr", file=sys.stderr)

    dk.get(say.remote(), timeout=30)
    captured = capfd.readouterr()
    assert "to stdout" in captured.out
    assert "to stderr" in captured.err


def test_stdout_of_a_task_takes_bytes_like_a_real_one(capfd, cluster):
    @dk.remote
    def write_bytes():
        sys.stdout.buffer.write("héllo bytes\n".encode())
        sys.stdout.buffer.flush()
        return sys.stdout.encoding, sys.stdout.isatty(), sys.stdout.writable()

    assert dk.get(write_bytes.remote(), timeout=30) == ("utf-8", False, True)
    assert "héllo bytes" in capfd.readouterr().out


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 10**400, 1e9])
def test_huge_timeouts_mean_no_limit(cluster, timeout):
    ref = slow.remote(0.2)
    assert dk.get(ref, timeout=timeout) == "finished"
    ready, _ = dk.wait([slow.remote(0.2)], timeout=timeout)
    assert len(ready) == 1


@pytest.mark.parametrize("timeout", [float("nan"), -1, "1", True])
def test_meaningless_timeouts_are_refused(cluster, timeout):
    ref = dk.put(1)
    with pytest.raises(ValueError, match=r"timeout=\.\.\.\) must be None or a number"):
        dk.get(ref, timeout=timeout)
    with pytest.raises(ValueError, match=r"timeout=\.\.\.\) must be None or a number"):
        dk.wait([ref], timeout=timeout)
    assert dk.get(ref) == 1


@pytest.mark.parametrize(("size", "match"), [
    ("inf", "is not a size"),
    (float("nan"), "is not a size"),
    (float("inf"), "is not a size"),
    ("1e30", "more than this machine's memory"),
    (10**30, "more than this machine's memory"),
    ("-5GB", "is not a size"),
    (0, "must be positive"),
])
def test_impossible_store_sizes_are_refused_with_the_reason(size, match):
    with pytest.raises(ValueError, match=match):
        dk.init(1, object_store_memory=size)
    assert not dk.is_initialized()
