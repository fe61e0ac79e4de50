"""The keeper of running children's records (``handover.Keeper``), as its actor runs it:
a take may come before the records it asks for, from another caller, on another thread.
Through Ray Client end to end: tests/api/test_ray_client.py."""

from __future__ import annotations

import threading
import time

from distkernel.backends.ray.handover import Keeper


def test_a_take_waits_for_records_that_come_after_it():
    keeper = Keeper()
    taken: list[tuple[object, ...]] = []
    taker = threading.Thread(target=lambda: taken.append(keeper.take("k1", 10)))
    taker.start()
    time.sleep(0.2)  # the take waits first
    keeper.keep("k2", ["other"])
    keeper.keep("k1", ["a", "b"])
    taker.join(timeout=10)
    assert taken == [("a", "b")]
    assert keeper.take("k2", 0) == ("other",)


def test_records_are_taken_once_and_a_take_of_nothing_ends_at_its_timeout():
    keeper = Keeper()
    keeper.keep("k", ["a"])
    assert keeper.take("k", 0) == ("a",)
    assert keeper.take("k", 0.2) == ()
