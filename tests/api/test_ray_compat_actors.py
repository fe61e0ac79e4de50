"""Actors as Ray programs use them, with ``import distkernel as ray``: class attributes,
options, named actors and namespaces, readiness, exit_actor, argument checks, async and
threaded actors, and the ``ray.actor`` module. Real worker processes throughout."""

from __future__ import annotations

import asyncio
import threading

import pytest

import distkernel as ray
from distkernel.store import serialization


@ray.remote
class Box:
    SIZE = 3
    KINDS = ("small", "large")

    def __init__(self, start=0):
        self.value = start

    def size(self):
        return Box.SIZE  # the class's own name inside its methods

    def add(self, amount):
        self.value += amount
        return self.value

    def get(self):
        return self.value

    def stop(self):
        ray.actor.exit_actor()

    def whoami(self):
        context = ray.get_runtime_context()
        return context.get_actor_id(), context.get_task_id()

    @staticmethod
    def twice(x):
        return 2 * x

    @classmethod
    def kinds(cls, index):
        return cls.KINDS[index]


@ray.remote
class SignalActor:
    """The test helper Ray users write: tasks wait on it until the driver sends."""

    def __init__(self):
        self.ready_event = asyncio.Event()

    def send(self):
        self.ready_event.set()

    async def wait(self, should_wait=True):
        if should_wait:
            await self.ready_event.wait()
        return "released"


def test_class_attributes_are_reachable_through_the_actor_class(cluster):
    assert Box.SIZE == 3 and Box.KINDS == ("small", "large")
    box = Box.remote()
    assert ray.get(box.size.remote()) == 3
    assert ray.get([box.twice.remote(4), box.kinds.remote(1)]) == [8, "large"]
    with pytest.raises(AttributeError, match="Box has no attribute 'MISSING'"):
        Box.MISSING  # noqa: B018


def test_ready_call_is_true_once_the_actor_is_up(cluster):
    box = Box.remote(5)
    assert ray.get(box.__ray_ready__.remote()) is True
    assert ray.get(box.get.remote()) == 5


def test_exit_actor_ends_the_actor_after_the_call(cluster):
    box = Box.remote()
    assert ray.get(box.stop.remote()) is None
    with pytest.raises(ray.ActorDiedError):
        ray.get(box.get.remote())
    with pytest.raises(TypeError, match="outside an actor method.*kill"):
        ray.exit_actor()

    @ray.remote
    def task_calls_exit():
        ray.actor.exit_actor()

    with pytest.raises(TypeError, match="outside an actor method"):
        ray.get(task_calls_exit.remote())


def test_calls_sent_behind_exit_actor_fail_and_those_before_it_keep_their_results(cluster):
    box = Box.remote()
    before = [box.add.remote(1) for _ in range(3)]
    stop = box.stop.remote()
    behind = [box.get.remote() for _ in range(3)]
    assert ray.get(before) == [1, 2, 3]
    assert ray.get(stop) is None
    for ref in behind:
        with pytest.raises(ray.ActorDiedError, match=r"exit_actor\(\) in Box\.stop"):
            ray.get(ref, timeout=30)
    with pytest.raises(ray.ActorDiedError, match="exit_actor"):  # a call made later too
        ray.get(box.get.remote(), timeout=30)


def test_actor_arguments_are_checked_at_submission(cluster):
    with pytest.raises(TypeError, match=r"Box\.remote.*too many positional arguments"):
        Box.remote(1, 2)
    box = Box.remote()
    with pytest.raises(TypeError, match=r"Box\.add.*missing a required argument: 'amount'"):
        box.add.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'by'"):
        box.add.remote(1, by=2)
    with pytest.raises(TypeError, match="too many positional"):
        box.twice.remote(1, 2)  # a staticmethod has no self to skip
    assert ray.get(box.add.remote(amount=2)) == 2

    @ray.remote
    def through_a_handle(handle):
        try:
            handle.add.remote(1, 2)
        except TypeError as exc:
            return str(exc)
        return "accepted"

    assert "too many positional" in ray.get(through_a_handle.remote(box))


def test_named_actor_in_a_namespace_and_get_if_exists(cluster):
    first = Box.options(name="store", namespace="team", get_if_exists=True).remote(1)
    again = Box.options(name="store", namespace="team", get_if_exists=True).remote(100)
    assert again == first  # the idiom for re-running a notebook cell
    ray.get(again.add.remote(1))
    assert ray.get(ray.get_actor("store", namespace="team").get.remote()) == 2
    with pytest.raises(ValueError, match="no actor named 'store'"):
        ray.get_actor("store")  # another namespace
    with pytest.raises(ValueError, match="needs a name"):
        Box.options(get_if_exists=True)
    with pytest.raises(ValueError, match="non-empty string"):
        Box.options(namespace="")


def test_get_actor_works_inside_tasks(cluster):
    # A named actor lives while a handle to it does, as in Ray: keep one.
    keep = Box.options(name="shared").remote(7)

    @ray.remote
    def read_shared():
        return ray.get(ray.get_actor("shared").get.remote())

    assert ray.get(read_shared.remote()) == 7
    ray.kill(keep)


def test_actor_ids_in_the_runtime_context(cluster):
    box = Box.remote()
    actor_id, task_id = ray.get(box.whoami.remote())
    assert actor_id == box.actor_id
    assert task_id


def test_actor_options_reach_the_engine_as_ray_names_them():
    ray.init(num_cpus=2, num_gpus=1, resources={"db": 1})

    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Service:
        @ray.method(concurrency_group="io")
        def fetch(self):
            return "fetched"

        @ray.method(num_returns=2)
        def pair(self):
            return 1, 2

        def plain(self):
            return "plain"

    options = Service.options(num_cpus=1, num_gpus=1, resources={"db": 1},
                              max_concurrency=3)._actor_options(
        Service._class_facts())
    assert dict(options.resources) == {"CPU": 1.0, "GPU": 1.0, "db": 1.0}
    assert (options.max_concurrency, options.is_async) == (3, False)
    assert dict(options.concurrency_groups) == {"io": 2, "compute": 1}
    assert dict(options.method_groups) == {"fetch": "io"}
    assert Service._actor_options(Service._class_facts()).resources == ()  # holds none
    assert SignalActor._actor_options(SignalActor._class_facts()).is_async
    service = Service.options(num_cpus=1, num_gpus=1, resources={"db": 1}).remote()
    assert ray.get([service.fetch.remote(), service.plain.remote()]) == ["fetched", "plain"]
    assert ray.get(list(service.pair.remote())) == [1, 2]
    assert ray.get(service.plain.options(concurrency_group="compute").remote()) == "plain"
    with pytest.raises(ValueError, match="no such group; its groups: compute, io"):
        service.plain.options(concurrency_group="gpu")


def test_a_method_in_an_undefined_group_is_refused(cluster):
    @ray.remote
    class Lost:
        @ray.method(concurrency_group="io")
        def fetch(self):
            return 1

    with pytest.raises(ValueError, match="concurrency group 'io'.*does not define"):
        Lost.remote()


def test_method_options_that_the_local_engine_lacks_are_refused():
    with pytest.raises(ValueError, match=r"whole actor: @remote\(max_task_retries"):
        ray.method(max_task_retries=2)
    with pytest.raises(TypeError, match="valid options: num_returns, concurrency_group"):
        ray.method(num_return=2)
    with pytest.raises(TypeError, match="concurrency_group must be a group's name"):
        ray.method(concurrency_group="")

    @ray.method
    def bare(self):
        return 1

    assert bare(None) == 1


def test_an_actor_holds_no_cpu_unless_asked():
    """Ray's default: an actor needs no CPU to run, so tasks keep the pool's CPUs."""
    ray.init(num_cpus=1)
    box = Box.remote()
    assert ray.get(box.add.remote(1)) == 1

    @ray.remote
    def task():
        return "ran"

    assert ray.get(task.remote(), timeout=30) == "ran"  # the one CPU is still free
    assert ray.available_resources()["CPU"] == 1


def test_async_actor_runs_calls_at_once_signal_actor(cluster):
    signal = SignalActor.remote()

    @ray.remote
    def waiter(signal):
        return ray.get(signal.wait.remote())

    waiting = [waiter.remote(signal) for _ in range(2)] + [signal.wait.remote()]
    ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
    assert ready == []  # all wait on the signal
    ray.get(signal.send.remote())
    assert ray.get(waiting, timeout=30) == ["released"] * 3


def test_threaded_actor_calls_that_wait_on_each_other_do_not_deadlock(cluster):
    @ray.remote(max_concurrency=2)
    class Meeting:
        def __init__(self):
            self.barrier = threading.Barrier(2, timeout=20)

        def arrive(self):
            return self.barrier.wait() in (0, 1)

    meeting = Meeting.remote()
    assert ray.get([meeting.arrive.remote(), meeting.arrive.remote()], timeout=30) == [True] * 2


def test_ray_actor_module_names(cluster):
    assert ray.actor.ActorClass is ray.ActorClass and ray.actor.ActorHandle is ray.ActorHandle
    box = Box.remote()
    assert isinstance(box, ray.actor.ActorHandle)
    assert isinstance(box.add, ray.actor.ActorMethod)
    assert ray.actor.exit_actor is ray.exit_actor and ray.actor.method is ray.method
    handle = serialization.deserialize(serialization.dumps(box))
    assert handle == box and ray.get(handle.add.remote(1)) == 1
