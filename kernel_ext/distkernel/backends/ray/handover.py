"""Through Ray Client: the tasks a call submitted that were still running when it raised.

A driver connected through Ray Client cannot be reached by its tasks' workers, so a
call's report travels as one more result (``runner``), and with it Ray refs to the
results and reports of the tasks it submitted that are still running: the driver
watches those from then on. A call that raises has no results, and an exception holding
Ray refs cannot be brought to the client. Its worker hands those records, refs and
all, to the job's keeper instead, and the report on the exception says under which key;
the driver takes them from there. (A task's worker that gets such a report, from a
call it submitted, takes them the same way, for its own report.)

The keeper is an actor that uses no CPU, one per driver connected through Ray Client,
made as it connects; workers find it by name. The driver's job owns it: it ends when the
driver disconnects. (Made by the worker that needed it first, it ended with that worker,
which Ray stops once it is idle.)
"""

from __future__ import annotations

import functools
import threading
from typing import Any

#: How long a driver waits for records handed over (seconds): they may come to the
#: keeper after the driver asks, and the keeper may still be starting.
TAKE_WAIT = 30.0


class Keeper:
    """The keeper actor: records handed over, by key, until they are taken."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Any, ...]] = {}
        self._came = threading.Condition()

    def keep(self, key: str, records: list[Any]) -> None:
        with self._came:
            self._kept[key] = tuple(records)
            self._came.notify_all()

    def take(self, key: str, timeout: float) -> tuple[Any, ...]:
        """The records kept under ``key`` (waiting for them up to ``timeout`` seconds),
        gone from here; none if they did not come."""
        with self._came:
            self._came.wait_for(lambda: key in self._kept, timeout)
            return self._kept.pop(key, ())


@functools.cache
def _keeper_class() -> Any:
    import ray

    return ray.remote(Keeper)


def _keeper_name() -> str:
    import ray

    return f"distkernel-keeper-{ray.get_runtime_context().get_job_id()}"


def start_keeper() -> Any:
    """In a driver connected through Ray Client: its job's keeper, a handle to it."""
    return _keeper_class().options(  # threaded: a take waits while keeps come in
        name=_keeper_name(), num_cpus=0, max_concurrency=16).remote()


def hand_over(records: tuple[Any, ...]) -> str:
    """In a worker: hand ``records`` (holding Ray refs) to the job's keeper; their key,
    for the report that travels on an exception. (The keeper is the job's: whoever takes
    them finds it by the job, as the worker did.)"""
    import ray

    from distkernel.core.refs import new_id

    keeper = ray.get_actor(_keeper_name())
    key = new_id()
    keeper.keep.remote(key, list(records))  # the keeper borrows the refs in them
    return key


def take(key: str) -> tuple[Any, ...]:
    """The records handed over under ``key`` (``hand_over``), taken from the keeper."""
    import ray

    keeper = ray.get_actor(_keeper_name())
    return tuple(ray.get(keeper.take.remote(key, TAKE_WAIT), timeout=TAKE_WAIT + 10))
