"""Actors through real worker processes: state, order, handles, death, restarts, clean-up."""

from __future__ import annotations

import gc
import os
import signal
import time
import weakref

import pytest

import distkernel as dk
from tests.conftest import our_workers, process_alive, wait_until


@dk.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.seen = []

    def add(self, amount=1):
        self.value += amount
        self.seen.append(amount)
        return self.value

    def history(self):
        return self.seen

    def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("no such thing")

    def crash(self):
        os._exit(7)

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


def test_state_is_kept_between_calls(cluster):
    counter = Counter.remote(10)
    assert dk.get(counter.add.remote()) == 11
    assert dk.get(counter.add.remote(5)) == 16
    assert dk.get(counter.pid.remote()) != os.getpid()


def test_calls_run_one_at_a_time_in_submission_order(cluster):
    counter = Counter.remote()
    refs = [counter.add.remote(i) for i in range(200)]
    assert dk.get(refs[-1]) == sum(range(200))
    assert dk.get(counter.history.remote()) == list(range(200))


def test_different_actors_run_in_parallel(cluster):
    first, second = Counter.remote(), Counter.remote()
    dk.get([first.pid.remote(), second.pid.remote()])  # both started
    started = time.monotonic()
    dk.get([first.nap.remote(0.5), second.nap.remote(0.5)])
    assert time.monotonic() - started < 0.95


def test_handles_travel_to_tasks_and_other_actors(cluster):
    counter = Counter.remote()

    @dk.remote
    def bump(handle, times):
        return dk.get([handle.add.remote() for _ in range(times)])[-1]

    @dk.remote
    class Relay:
        def __init__(self, target):
            self.target = target

        def forward(self):
            return dk.get(self.target.add.remote(100))

    assert dk.get(bump.remote(counter, 3)) == 3
    relay = Relay.remote(counter)
    assert dk.get(relay.forward.remote()) == 103
    assert dk.get(counter.add.remote(0)) == 103


def test_method_error_fails_that_call_only(cluster):
    counter = Counter.remote()
    with pytest.raises(KeyError, match="no such thing") as info:
        dk.get(counter.fail.remote())
    assert isinstance(info.value, dk.TaskError)
    assert dk.get(counter.add.remote()) == 1


def test_constructor_error_surfaces_on_first_get(cluster):
    @dk.remote
    class Broken:
        def __init__(self):
            raise ValueError("cannot start")

        def ping(self):
            return "pong"

    broken = Broken.remote()  # returns at once
    with pytest.raises(dk.ActorDiedError, match="cannot start"):
        dk.get(broken.ping.remote(), timeout=30)
    with pytest.raises(dk.ActorDiedError):
        dk.get(broken.ping.remote(), timeout=30)


def test_kill_fails_pending_and_later_calls(cluster):
    counter = Counter.remote()
    pid = dk.get(counter.pid.remote())
    pending = counter.nap.remote(30)
    dk.kill(counter)
    with pytest.raises(dk.ActorDiedError, match="kill"):
        dk.get(pending, timeout=10)
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.add.remote(), timeout=10)
    assert wait_until(lambda: not process_alive(pid))


@pytest.mark.local_only("Ray's message for an actor's death names no exit code")
def test_crash_names_class_pid_and_exit(cluster):
    counter = Counter.remote()
    pid = dk.get(counter.pid.remote())
    with pytest.raises(dk.ActorDiedError) as info:
        dk.get(counter.crash.remote(), timeout=10)
    text = str(info.value)
    assert "Counter" in text and str(pid) in text and "exit code 7" in text
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.add.remote(), timeout=10)
    assert dk.get(dk.remote(lambda: "pool fine").remote()) == "pool fine"


@pytest.mark.local_only("Ray's message for an actor's death names no signal")
def test_signal_death_is_named(cluster):
    counter = Counter.remote()
    pid = dk.get(counter.pid.remote())
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(dk.ActorDiedError, match="SIGKILL"):
        dk.get(counter.add.remote(), timeout=10)


@pytest.mark.local_only("Ray fails a call made while its actor restarts (unless "
                        "max_task_retries is set); the local engine runs it once the actor is back")
def test_restart_from_constructor(cluster):
    counter = Counter.options(max_restarts=1).remote(5)
    first_pid = dk.get(counter.pid.remote())
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.crash.remote(), timeout=10)
    assert dk.get(counter.add.remote(), timeout=30) == 6  # state from the constructor again
    assert dk.get(counter.pid.remote()) != first_pid
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.crash.remote(), timeout=10)
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.add.remote(), timeout=10)  # restarts used up


def test_last_handle_gone_stops_actor(cluster):
    counter = Counter.remote()
    pid = dk.get(counter.pid.remote())
    result = counter.nap.remote(0.3)
    del counter
    assert dk.get(result) == 0.3  # queued calls still finish
    assert wait_until(lambda: not process_alive(pid))
    assert dk.status()["actors"] == []


def test_status_and_timeline_show_actors(cluster):
    counter = Counter.options(name="counter").remote()
    dk.get(counter.add.remote())
    actors = dk.status()["actors"]
    assert len(actors) == 1
    row = actors[0]
    assert row["class_name"] == "Counter" and row["name"] == "counter" and row["pid"] > 0
    assert row["queued_calls"] == 0
    kinds = [(r.kind, r.name) for r in dk.timeline()]
    assert ("actor_create", "Counter") in kinds and ("actor_method", "Counter.add") in kinds


def test_wrong_use_gives_clear_errors(cluster):
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"Counter\.add\.remote"):
        counter.add(1)
    with pytest.raises(AttributeError, match="Counter has no method 'missing'.*add"):
        counter.missing  # noqa: B018
    with pytest.raises(TypeError, match=r"Counter\.remote"):
        Counter(1)
    with pytest.raises(TypeError, match="valid options"):
        Counter.options(max_restart=1)


def test_named_actor_and_num_returns(cluster):
    @dk.remote
    class Pair:
        @dk.method(num_returns=2)
        def split(self, x):
            return x, -x

    keep = Pair.options(name="pair").remote()
    found = dk.get_actor("pair")
    assert found == keep
    a, b = found.split.remote(4)
    assert dk.get([a, b]) == [4, -4]
    with pytest.raises(ValueError, match="no actor named"):
        dk.get_actor("nobody")
    with pytest.raises(ValueError, match="already exists"):
        Pair.options(name="pair").remote()


def test_detached_actor_outlives_its_handles_until_killed(cluster):
    Counter.options(name="keeper", lifetime="detached").remote(1)
    assert dk.get(dk.get_actor("keeper").add.remote()) == 2
    handle = dk.get_actor("keeper")
    pid = dk.get(handle.pid.remote())
    dk.kill(handle)
    assert wait_until(lambda: not process_alive(pid))
    with pytest.raises(ValueError, match="no actor named"):
        dk.get_actor("keeper")


@pytest.mark.local_only("its 0.9 s deadline is shorter than a Ray worker's start")
def test_waiting_call_does_not_block_other_callers(cluster):
    counter = Counter.remote()

    @dk.remote
    def slow_value():
        time.sleep(1.0)
        return 1

    waiting = counter.add.remote(slow_value.remote())  # waits for its argument

    @dk.remote
    def other_caller(handle):
        return dk.get(handle.add.remote(10))

    assert dk.get(other_caller.remote(counter), timeout=0.9) == 10
    assert dk.get(waiting) == 11


def test_shutdown_stops_actors():
    dk.init(1)
    counters = [Counter.remote() for _ in range(2)]
    dk.get([c.pid.remote() for c in counters])
    dk.shutdown()
    assert wait_until(lambda: not our_workers())


# --- the seed scenario --------------------------------------------------------------------

NAP = 0.2


class Spoon:
    def la(self):
        return True


class Leborn:
    def la(self):
        return False


@dk.remote
class Cup:
    def __init__(self, capacity):
        self.capacity = capacity

    def la_with_laable_item(self, item):
        if item.la():
            time.sleep(NAP)
            self.capacity -= 1

    def is_good(self):
        return self.capacity <= 0


def _three_rounds(item):
    cup = Cup.remote(3)
    answers = []
    started = time.monotonic()
    for _ in range(3):
        cup.la_with_laable_item.remote(item)
        answers.append(dk.get(cup.is_good.remote()))
    return answers, time.monotonic() - started


@pytest.mark.local_only("times calls against a 0.2 s nap: a Ray actor's start takes longer")
def test_seed_cup_with_spoon_ref_local_spoon_and_leborn(cluster):
    answers, took = _three_rounds(dk.put(Spoon()))
    assert answers == [False, False, True] and took >= 3 * NAP
    answers, took = _three_rounds(Spoon())
    assert answers == [False, False, True] and took >= 3 * NAP
    answers, took = _three_rounds(Leborn())
    assert answers == [False, False, False] and took < 3 * NAP



def test_a_killed_actor_goes_with_its_last_handle(cluster):
    """Nothing of kill() keeps the handle (no cycle through an exception it caught): the
    actor is let go when the notebook drops it, not at some later garbage collection."""
    counter = Counter.remote()
    dk.get(counter.pid.remote())
    handle_alive = weakref.ref(counter)
    collecting = gc.isenabled()
    gc.disable()
    try:
        dk.kill(counter)
        del counter
        assert handle_alive() is None
    finally:
        if collecting:
            gc.enable()


class Argument:
    """Whether it is still alive can be asked (a weak reference to it)."""


@dk.remote
class Keeper:
    def fails_with(self, argument):
        gc.disable()  # (until alive() asks: only a cycle could keep the argument now)
        self.kept = weakref.ref(argument)
        raise ValueError("no")

    def alive(self):
        try:
            return self.kept() is not None
        finally:
            gc.enable()


def test_a_method_that_raises_lets_go_of_its_arguments(cluster):
    """The error goes back to the driver; the actor keeps no frame of the call (and so
    no argument of it, a large array say) in a cycle until its next garbage collection."""
    keeper = Keeper.remote()
    with pytest.raises(ValueError, match="no"):
        dk.get(keeper.fails_with.remote(Argument()), timeout=30)
    assert dk.get(keeper.alive.remote(), timeout=30) is False


def test_new_actor_after_killing_and_dropping_one(cluster):
    counter = Counter.remote()
    dk.get(counter.pid.remote())
    dk.kill(counter)
    del counter  # the last handle goes before the killed worker's exit is seen
    fresh = Counter.remote(1)
    assert dk.get(fresh.add.remote(), timeout=15) == 2
