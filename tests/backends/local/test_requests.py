"""Calls from inside tasks (``backends.local.requests``): a task that uses the API.

A task calls ``distkernel`` as the driver does, and its worker asks the driver: get,
put, wait, submit, cancel, actors created, killed and looked up by name. Each test runs
such a task on real workers and checks what the task got back, including the errors,
which must be the documented exceptions (SPEC §5) raised inside the task.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

import distkernel as dk

#: Over the inline threshold: travels through the driver's shared memory.
LARGE = 2_000_000


@dk.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def add(self, n=1):
        self.value += n
        return self.value


# -- get / put ---------------------------------------------------------------------------------

def test_get_in_a_task_of_small_and_large_objects_from_the_driver(cluster):
    small, large = dk.put({"a": 1}), dk.put(np.arange(LARGE // 8, dtype=np.int64))

    @dk.remote
    def read(boxed):  # refs inside a list are not resolved before the task runs
        small_value, large_value = dk.get(boxed)
        return small_value["a"], int(large_value.sum()), large_value.flags.writeable

    expected_sum = int(np.arange(LARGE // 8, dtype=np.int64).sum())
    assert dk.get(read.remote([small, large]), timeout=60) == (1, expected_sum, False)


def test_put_in_a_task_small_and_large_and_the_driver_gets_them(cluster):
    @dk.remote
    def store():
        small = dk.put("small")
        large = dk.put(np.full(LARGE // 8, 7, dtype=np.int64))
        assert dk.get(small) == "small"  # the task reads its own put
        return [small, large]

    small, large = dk.get(store.remote(), timeout=60)
    assert dk.get(small) == "small"
    assert int(dk.get(large).sum()) == 7 * (LARGE // 8)


def test_a_ref_put_in_a_task_outlives_the_task(cluster):
    @dk.remote
    def make():
        return [dk.put(list(range(1000)))]

    (ref,) = dk.get(make.remote(), timeout=60)
    dk.get([make.remote() for _ in range(4)], timeout=60)  # the worker moves on
    assert dk.get(ref) == list(range(1000))


# -- submit from a task ------------------------------------------------------------------------

def test_a_task_submits_children_and_gets_their_results(cluster):
    @dk.remote
    def child(x):
        return x + 1

    @dk.remote
    def parent(n):
        return sum(dk.get([child.remote(i) for i in range(n)]))

    assert dk.get(parent.remote(20), timeout=60) == sum(range(1, 21))


def test_a_task_waiting_for_its_child_on_a_one_worker_pool_does_not_deadlock():
    """The waiting parent's worker counts as blocked: an extra worker runs the child."""
    dk.init(1)

    @dk.remote
    def child():
        return "child"

    @dk.remote
    def parent():
        return dk.get(child.remote(), timeout=60)

    assert dk.get(parent.remote(), timeout=60) == "child"


def test_a_task_passes_large_arguments_to_its_children(cluster):
    @dk.remote
    def total(array):
        return int(array.sum())

    @dk.remote
    def parent():
        array = np.ones(LARGE // 8, dtype=np.int64)
        return dk.get([total.remote(array), total.remote(array * 2)])

    assert dk.get(parent.remote(), timeout=60) == [LARGE // 8, 2 * (LARGE // 8)]


# -- wait --------------------------------------------------------------------------------------

def test_wait_in_a_task_returns_what_is_ready():
    dk.init(3)  # the parent, a quick child and a slow one run at once

    @dk.remote
    def quick():
        return "quick"

    @dk.remote
    def slow():
        time.sleep(60)

    @dk.remote
    def parent():
        fast_ref, slow_ref = quick.remote(), slow.remote()
        ready, pending = dk.wait([fast_ref, slow_ref], num_returns=1, timeout=30)
        at_once = dk.wait([slow_ref], num_returns=1, timeout=0)
        expired = dk.wait([slow_ref], num_returns=1, timeout=0.2)
        dk.cancel(slow_ref, force=True)
        return (ready == [fast_ref], pending == [slow_ref], dk.get(ready[0]),
                at_once == ([], [slow_ref]), expired == ([], [slow_ref]))

    assert dk.get(parent.remote(), timeout=60) == (True, True, "quick", True, True)


def test_wait_in_a_task_for_all_of_several_children(cluster):
    @dk.remote
    def child(i):
        return i

    @dk.remote
    def parent():
        refs = [child.remote(i) for i in range(6)]
        ready, pending = dk.wait(refs, num_returns=6, timeout=60)
        return sorted(dk.get(ready)), pending

    assert dk.get(parent.remote(), timeout=60) == (list(range(6)), [])


# -- cancel ------------------------------------------------------------------------------------

def test_a_task_cancels_its_child():
    dk.init(3)

    @dk.remote
    def forever():
        while True:
            time.sleep(0.05)

    @dk.remote
    def parent():
        ref = forever.remote()
        dk.wait([ref], timeout=0.5)  # let it start
        dk.cancel(ref)
        try:
            dk.get(ref, timeout=30)
        except dk.TaskCancelledError as exc:
            return type(exc).__name__
        return "not cancelled"

    assert dk.get(parent.remote(), timeout=60) == "TaskCancelledError"
    assert dk.get(dk.remote(lambda: "ok").remote(), timeout=60) == "ok"


# -- actors ------------------------------------------------------------------------------------

def test_a_task_creates_an_actor_and_calls_it(cluster):
    @dk.remote
    def use_an_actor():
        counter = Counter.remote(10)
        return dk.get([counter.add.remote(), counter.add.remote(5)])

    assert dk.get(use_an_actor.remote(), timeout=60) == [11, 16]


def test_a_task_kills_an_actor_and_later_calls_raise_actor_died(cluster):
    counter = Counter.remote()
    assert dk.get(counter.add.remote(), timeout=60) == 1

    @dk.remote
    def kill_it(handle):
        dk.kill(handle)
        try:
            dk.get(handle.add.remote(), timeout=30)
        except dk.ActorDiedError as exc:
            return type(exc).__name__
        return "still alive"

    assert dk.get(kill_it.remote(counter), timeout=60) == "ActorDiedError"
    with pytest.raises(dk.ActorDiedError):
        dk.get(counter.add.remote(), timeout=30)


def test_get_actor_in_a_task_finds_the_drivers_named_actor(cluster):
    counter = Counter.options(name="shared-counter").remote()
    assert dk.get(counter.add.remote(), timeout=60) == 1

    @dk.remote
    def bump():
        return dk.get(dk.get_actor("shared-counter").add.remote(10))

    assert dk.get(bump.remote(), timeout=60) == 11
    assert dk.get(counter.add.remote(), timeout=60) == 12


def test_get_actor_in_a_task_of_an_unknown_name_raises_value_error(cluster):
    @dk.remote
    def look_up():
        try:
            dk.get_actor("nobody-has-this-name")
        except ValueError as exc:
            return str(exc)
        return "found"

    message = dk.get(look_up.remote(), timeout=60)
    assert "no actor named 'nobody-has-this-name' is alive" in message


def test_a_named_actor_made_in_a_task_is_found_by_the_driver_and_names_are_unique(cluster):
    @dk.remote
    def make_named():
        first = Counter.options(name="made-in-a-task").remote(100)
        again = Counter.options(name="made-in-a-task", get_if_exists=True).remote()
        try:
            Counter.options(name="made-in-a-task").remote()
        except ValueError as exc:
            taken = str(exc)
        else:
            taken = ""
        values = dk.get([first.add.remote(), again.add.remote()])
        return values, taken, first

    values, taken, handle = dk.get(make_named.remote(), timeout=60)
    assert values == [101, 102]  # get_if_exists gave the same actor
    assert "made-in-a-task" in taken
    assert dk.get(dk.get_actor("made-in-a-task").add.remote(), timeout=60) == 103
    dk.kill(handle)


# -- errors come back as the documented exceptions ---------------------------------------------

def test_get_in_a_task_of_a_failed_child_raises_task_error_and_the_original(cluster):
    @dk.remote(max_retries=0)
    def broken():
        raise ValueError("the child broke")

    @dk.remote
    def parent():
        try:
            dk.get(broken.remote())
        except ValueError as exc:
            return isinstance(exc, dk.TaskError), "the child broke" in str(exc)
        return None

    assert dk.get(parent.remote(), timeout=60) == (True, True)


def test_get_in_a_task_with_a_timeout_raises_get_timeout_error(cluster):
    @dk.remote
    def slow():
        time.sleep(60)

    @dk.remote
    def parent():
        ref = slow.remote()
        try:
            dk.get(ref, timeout=0.3)
        except dk.GetTimeoutError as exc:
            dk.cancel(ref, force=True)
            return isinstance(exc, TimeoutError)
        return "no timeout"

    assert dk.get(parent.remote(), timeout=60) is True


def test_get_in_a_task_of_a_freed_object_raises_object_lost_error(cluster):
    """A ref kept only in pickled form does not keep its object alive."""
    ref = dk.put("soon gone")
    kept = pickle.dumps(ref)
    del ref

    @dk.remote
    def late(blob):
        try:
            dk.get(pickle.loads(blob), timeout=30)
        except dk.ObjectLostError as exc:
            return str(exc)
        return "found"

    assert "is gone" in dk.get(late.remote(kept), timeout=60)


def test_put_in_a_task_beyond_the_store_raises_object_store_full_error(small_store):
    @dk.remote
    def too_big():
        try:
            dk.put(np.zeros(16 * 1024 * 1024, dtype=np.uint8))
        except dk.ObjectStoreFullError as exc:
            return isinstance(exc, MemoryError), str(exc)
        return None

    is_memory_error, message = dk.get(too_big.remote(), timeout=60)
    assert is_memory_error
    assert "store" in message
    assert dk.get(dk.put("still fits")) == "still fits"


def test_a_failed_request_leaves_the_worker_usable(cluster):
    @dk.remote
    def timeouts_then_work():
        @dk.remote
        def slow():
            time.sleep(60)

        ref = slow.remote()
        for _ in range(3):
            try:
                dk.get(ref, timeout=0.1)
            except dk.GetTimeoutError:
                pass
        dk.cancel(ref, force=True)
        return dk.get(dk.put("after the errors"))

    assert dk.get(timeouts_then_work.remote(), timeout=60) == "after the errors"
    assert dk.get(timeouts_then_work.remote(), timeout=60) == "after the errors"
