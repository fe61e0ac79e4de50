"""Ray programs whose behaviour rests on the engine, with ``import distkernel as ray``:
resources that limit parallelism, GPUs by device, async and threaded actors, named
actors, errors raised at once, retries of exceptions. Real worker processes throughout;
overlap of two tasks is read from their own start and end times, never from a clock
budget."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import distkernel as ray


@ray.remote
def span(seconds: float) -> tuple[float, float]:
    started = time.time()
    while time.time() - started < seconds:  # short sleeps: Ray cancels between bytecodes
        time.sleep(min(0.05, seconds))
    return started, time.time()


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@ray.remote
class Gathering:
    """An async meeting point: ``arrive`` returns once ``size`` callers have arrived."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrived = 0
        self.everyone = asyncio.Event()

    async def arrive(self) -> int:
        self.arrived += 1
        if self.arrived >= self.size:
            self.everyone.set()
        await asyncio.wait_for(self.everyone.wait(), timeout=20)
        return self.arrived


# -- resources ---------------------------------------------------------------------------------

def test_a_task_asking_for_every_cpu_runs_alone():
    ray.init(num_cpus=2)
    wide = span.options(num_cpus=2).remote(0.4)
    narrow = [span.remote(0.1) for _ in range(2)]
    wide_span, *narrow_spans = ray.get([wide, *narrow])
    assert not any(overlap(wide_span, other) for other in narrow_spans)
    assert overlap(*ray.get([span.remote(0.3), span.remote(0.3)]))  # default tasks do overlap


def test_a_custom_resource_limits_how_many_run_at_once():
    ray.init(num_cpus=2, resources={"db": 1})
    spans = ray.get([span.options(resources={"db": 1}).remote(0.2) for _ in range(2)])
    assert not overlap(*spans)


def test_tasks_needing_no_cpu_run_beyond_the_cpu_count():
    ray.init(num_cpus=1)
    gathering = Gathering.remote(3)

    @ray.remote(num_cpus=0)
    def meet(gathering):
        return ray.get(gathering.arrive.remote())

    assert ray.get([meet.remote(gathering) for _ in range(3)], timeout=30) == [3, 3, 3]


def test_gpus_are_handed_out_by_device():
    ray.init(num_cpus=3, num_gpus=2)

    @ray.remote(num_gpus=1)
    def device(seconds):
        time.sleep(seconds)
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    @ray.remote
    def no_gpu():
        return ray.get_gpu_ids()

    first, second = ray.get([device.remote(0.3), device.remote(0.3)])
    assert {tuple(first[0]), tuple(second[0])} == {(0,), (1,)}
    assert first[1] in ("0", "1") and first[1] != second[1]
    assert ray.get(no_gpu.remote()) == []
    half = ray.get(device.options(num_gpus=0.5).remote(0))
    assert len(half[0]) == 1
    with pytest.raises(ValueError, match="needs 3 GPUs and the cluster has 2"):
        device.options(num_gpus=3).remote(0)


def test_an_actor_that_asks_for_a_cpu_holds_it_while_it_lives():
    ray.init(num_cpus=2)

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return "pong"

    holder = Holder.remote()
    assert ray.get(holder.ping.remote()) == "pong"
    assert not overlap(*ray.get([span.remote(0.2), span.remote(0.2)]))  # one CPU is its
    ray.kill(holder)
    assert overlap(*ray.get([span.remote(0.3), span.remote(0.3)]))  # both CPUs again


@pytest.mark.local_only('Ray keeps an infeasible task waiting for a node that fits')
def test_asking_for_more_than_the_cluster_has_fails_at_the_call(cluster):
    with pytest.raises(ValueError, match="needs 8 CPUs and the cluster has 2"):
        span.options(num_cpus=8).remote(0)
    with pytest.raises(ValueError, match="'tpu'"):
        span.options(resources={"tpu": 1}).remote(0)
    assert ray.get(span.remote(0))  # and nothing was left half submitted


# -- errors --------------------------------------------------------------------------------------

def test_get_raises_the_first_error_without_waiting_for_the_rest(cluster):
    gathering = Gathering.remote(2)  # only one will arrive: never finishes on its own

    @ray.remote
    def fails():
        raise KeyError("gone")

    never = gathering.arrive.remote()
    with pytest.raises(KeyError):
        ray.get([never, fails.remote()], timeout=30)

    @ray.remote
    def parent(gathering):
        return ray.get([gathering.arrive.remote(), fails.remote()])

    with pytest.raises(KeyError):
        ray.get(parent.remote(gathering), timeout=30)


def test_a_task_depending_on_a_cancelled_task_is_cancelled_too(cluster):
    @ray.remote
    def passthrough(value):
        return value

    slow = span.remote(30)
    dependent = passthrough.remote(slow)
    time.sleep(0.2)
    ray.cancel(slow)
    with pytest.raises(ray.TaskCancelledError):
        ray.get(dependent, timeout=30)


def test_retry_exceptions_names_which_exceptions_are_retried(cluster, tmp_path):
    @ray.remote(max_retries=3, retry_exceptions=[ConnectionError])
    def flaky(folder, error):
        attempt = len(os.listdir(folder))
        open(os.path.join(folder, str(attempt)), "w").close()
        if attempt < 2:
            raise error("not yet")
        return attempt

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert ray.get(flaky.remote(str(tmp_path / "a"), ConnectionError)) == 2
    with pytest.raises(ValueError):  # not in the list: raised at once
        ray.get(flaky.remote(str(tmp_path / "b"), ValueError))
    assert len(os.listdir(tmp_path / "b")) == 1


# -- async and threaded actors -----------------------------------------------------------------

def test_an_async_actor_awaits_refs_and_runs_many_calls_at_once(cluster):
    @ray.remote
    class Fetcher:
        async def fetch(self, delay):
            await asyncio.sleep(delay)
            return delay

        async def fetch_ref(self, ref_holder):
            return await ref_holder[0]

    fetcher = Fetcher.remote()
    assert ray.get(fetcher.fetch_ref.remote([ray.put(41)])) == 41
    gathering = Gathering.remote(5)  # five calls of one actor in flight at once
    assert ray.get([gathering.arrive.remote() for _ in range(5)], timeout=30) == [5] * 5
    assert ray.get([fetcher.fetch.remote(0.01 * i) for i in range(20)]) == \
        [0.01 * i for i in range(20)]


def test_a_running_async_call_can_be_cancelled_and_the_actor_lives_on(cluster):
    @ray.remote
    class Sleeper:
        async def sleep(self, seconds):
            await asyncio.sleep(seconds)
            return "woke"

    sleeper = Sleeper.remote()
    long = sleeper.sleep.remote(60)
    time.sleep(0.3)
    ray.cancel(long)
    with pytest.raises(ray.TaskCancelledError):
        ray.get(long, timeout=30)
    assert ray.get(sleeper.sleep.remote(0)) == "woke"


def test_a_concurrency_group_of_one_runs_its_calls_one_at_a_time(cluster):
    @ray.remote(concurrency_groups={"serial": 1}, max_concurrency=4)
    class Service:
        def work(self, seconds):
            started = time.time()
            time.sleep(seconds)
            return started, time.time()

        @ray.method(concurrency_group="serial")
        def serial(self, seconds):
            started = time.time()
            time.sleep(seconds)
            return started, time.time()

    service = Service.remote()
    serial = ray.get([service.serial.remote(0.2) for _ in range(2)])
    assert not overlap(*serial)
    assert overlap(*ray.get([service.work.remote(0.3) for _ in range(2)]))


def test_exit_actor_is_not_restarted(cluster):
    @ray.remote(max_restarts=3)
    class Quitter:
        def quit(self):
            ray.exit_actor()

        def ping(self):
            return "pong"

    quitter = Quitter.remote()
    assert ray.get(quitter.ping.remote()) == "pong"
    assert ray.get(quitter.quit.remote()) is None
    with pytest.raises(ray.ActorDiedError, match="exit_actor"):
        ray.get(quitter.ping.remote(), timeout=30)


# -- named actors ------------------------------------------------------------------------------

@ray.remote
class Named:
    def __init__(self, tag):
        self.tag = tag

    def get(self):
        return self.tag


def test_a_killed_actors_name_is_free_while_its_handle_lives(cluster):
    first = Named.options(name="hi").remote(1)
    assert ray.get(first.get.remote()) == 1
    ray.kill(first)
    with pytest.raises(ValueError, match="no actor named 'hi'"):
        ray.get_actor("hi")
    second = Named.options(name="hi").remote(2)
    assert ray.get(ray.get_actor("hi").get.remote()) == 2
    assert first is not None and second is not None


def test_named_actors_made_inside_tasks_follow_the_same_rules(cluster):
    @ray.remote
    def make(tag, reuse):
        actor = Named.options(name="shared", get_if_exists=reuse).remote(tag)
        return ray.get(actor.get.remote())

    keeper = Named.options(name="shared").remote("first")
    assert ray.get(keeper.get.remote()) == "first"
    assert ray.get(make.remote("second", True)) == "first"
    with pytest.raises(ValueError, match="already exists"):
        ray.get(make.remote("third", False))


# -- output --------------------------------------------------------------------------------------

def test_log_to_driver_false_keeps_task_output_out_of_the_driver(capfd):
    ray.init(num_cpus=1, log_to_driver=False)

    @ray.remote
    def say():
        print("not shown")
        return "said"

    assert ray.get(say.remote()) == "said"
    time.sleep(0.2)
    assert "not shown" not in capfd.readouterr().out
