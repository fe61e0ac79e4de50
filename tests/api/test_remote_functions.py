"""Remote functions through real worker processes: submit, get, wait, options, nesting."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import distkernel as dk
from distkernel.api import runtime
from tests.conftest import wait_until


@dk.remote
def add(a, b=0):
    return a + b


@dk.remote
def whoami():
    return os.getpid()


def test_remote_returns_ref_and_get_gives_value(cluster):
    ref = add.remote(1, 2)
    assert isinstance(ref, dk.ObjectRef)
    assert dk.get(ref) == 3
    assert dk.get([add.remote(i, b=i) for i in range(20)]) == [2 * i for i in range(20)]


def test_tasks_run_in_other_processes_in_parallel(cluster):
    @dk.remote
    def sleepy():
        time.sleep(0.5)
        return os.getpid()

    start = time.monotonic()
    pids = dk.get([sleepy.remote() for _ in range(2)])
    assert os.getpid() not in pids
    assert len(set(pids)) == 2
    assert time.monotonic() - start < 0.95  # two workers: in parallel, not one after the other


def test_calling_directly_says_to_use_remote(cluster):
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)


def test_num_returns_and_options(cluster):
    @dk.remote(num_returns=2)
    def pair(x):
        return x, x * 10

    a, b = pair.remote(3)
    assert dk.get([a, b]) == [3, 30]
    single = pair.options(num_returns=1).remote(4)
    assert dk.get(single) == (4, 40)
    triple = pair.options(num_returns=3).remote(1)
    with pytest.raises(dk.TaskError, match="num_returns=3"):
        dk.get(triple[0])


def test_unknown_option_lists_valid_ones():
    with pytest.raises(TypeError, match="valid options: .*num_returns"):
        dk.remote(num_return=2)(lambda: 1)
    with pytest.raises(ValueError, match="num_returns must be an int >= 1"):
        dk.remote(num_returns=0)(lambda: 1)


def test_lambdas_closures_and_notebook_classes_travel(cluster):
    offset = 7

    class Point:
        def __init__(self, x):
            self.x = x

        def moved(self):
            return Point(self.x + offset)

    @dk.remote
    def apply(fn, value):
        return fn(value)

    assert dk.get(apply.remote(lambda v: v * 3, 5)) == 15
    moved = dk.get(apply.remote(lambda p: p.moved(), Point(1)))
    assert moved.x == 8
    assert type(moved).__name__ == "Point"


def test_redefined_function_uses_new_code(cluster):
    @dk.remote
    def version():
        return 1

    assert dk.get(version.remote()) == 1

    @dk.remote
    def version():
        return 2

    assert dk.get(version.remote()) == 2


def test_top_level_refs_resolved_nested_refs_stay_refs(cluster):
    ref = dk.put(41)

    @dk.remote
    def inspect_args(direct, nested):
        return direct, type(nested[0]).__name__, dk.get(nested[0])

    assert dk.get(inspect_args.remote(ref, [ref])) == (41, "ObjectRef", 41)


def test_task_waits_for_dependencies_without_holding_worker(cluster):
    @dk.remote
    def slow(x):
        time.sleep(0.3)
        return x

    first = slow.remote(1)
    second = add.remote(first, 1)  # waits for first, holding no worker
    quick = add.remote(5, 5)
    assert dk.get(quick, timeout=5) == 10
    assert dk.get(second) == 2


def test_nested_tasks_do_not_deadlock(cluster):
    @dk.remote
    def leaf(x):
        return x * 2

    @dk.remote
    def parent(x):
        return sum(dk.get([leaf.remote(x + i) for i in range(3)]))

    # more parents than workers, each blocked in get on its children
    assert dk.get([parent.remote(i) for i in range(4)], timeout=30) == [
        sum(2 * (i + k) for k in range(3)) for i in range(4)]


def test_gets_from_several_threads_each_receive_their_own_results(cluster):
    # Whichever thread waits reads the workers' sockets for everyone for a moment, and
    # hands over to the others: no result may go to the wrong caller or wait forever.
    answers: dict[int, list[int]] = {}

    def caller(k: int) -> None:
        answers[k] = [dk.get(add.remote(k, i), timeout=30) for i in range(300)]

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(1, 5)]
    for thread in threads:
        thread.start()
    caller(0)
    for thread in threads:
        thread.join(60)
    assert answers == {k: [k + i for i in range(300)] for k in range(5)}


def test_a_zero_timeout_does_not_wait(cluster):
    @dk.remote
    def slow():
        time.sleep(5)

    ref = slow.remote()
    started = time.monotonic()
    assert dk.wait([ref], timeout=0) == ([], [ref])
    with pytest.raises(dk.GetTimeoutError):
        dk.get(ref, timeout=0)
    assert time.monotonic() - started < 0.1
    dk.cancel(ref, force=True)


def test_put_and_get_inside_tasks(cluster):
    @dk.remote
    def make():
        return dk.put({"inner": 5})

    inner_ref = dk.get(make.remote())
    assert isinstance(inner_ref, dk.ObjectRef)
    assert dk.get(inner_ref) == {"inner": 5}


def test_a_ref_is_a_future_and_awaitable_in_the_driver(cluster):
    ref = add.remote(6, 30)
    assert ref.future().result(timeout=30) == 36

    async def both() -> list[int]:
        return [await add.remote(7, 42), await add.remote(8, 56)]

    assert asyncio.run(both()) == [49, 64]


def test_wait_returns_ready_and_not_ready(cluster):
    @dk.remote
    def slow():
        time.sleep(2)
        return "slow"

    fast_ref, slow_ref = add.remote(1), slow.remote()
    ready, not_ready = dk.wait([slow_ref, fast_ref], num_returns=1, timeout=1.5)
    assert ready == [fast_ref] and not_ready == [slow_ref]
    ready, not_ready = dk.wait([slow_ref, fast_ref], num_returns=2)
    assert ready == [slow_ref, fast_ref] and not_ready == []


def test_wait_rejects_bad_input(cluster):
    ref = dk.put(1)
    with pytest.raises(ValueError, match="more than"):
        dk.wait([ref], num_returns=2)
    with pytest.raises(ValueError, match="distinct"):
        dk.wait([ref, ref], num_returns=1)
    with pytest.raises(TypeError, match="list"):
        dk.wait(ref)


def test_get_rejects_non_refs(cluster):
    with pytest.raises(TypeError, match="item 1 is a int"):
        dk.get([dk.put(1), 2])
    with pytest.raises(ValueError, match="timeout"):
        dk.get(dk.put(1), timeout=-1)


def test_worker_output_reaches_driver_with_worker_id(cluster, capfd):
    @dk.remote
    def talk():
        print("hello from a task")
        return 1

    dk.get(talk.remote())
    time.sleep(0.2)  # the output message may trail the result by a moment
    out = capfd.readouterr().out
    assert "hello from a task" in out
    assert "(worker " in out


def test_every_line_printed_by_tasks_arrives_one_by_one_or_in_a_burst(cluster):
    # Lines and results often arrive in one read, by whichever thread reads: the
    # waiting caller, a caller submitting a burst, or the I/O thread. The lines are
    # collected from the engine's output hook: reading a captured stdout while another
    # thread still prints into it can drop what is written between its read and its reset.
    engine = runtime.current_engine()
    assert engine is not None
    lines: list[str] = []
    lock = threading.Lock()

    def collect(worker_id, task_id, stream, text):
        with lock:
            lines.extend(text.splitlines())

    engine.route_output(None, collect)

    @dk.remote
    def talk(i):
        print(f"line {i}")
        return i

    assert [dk.get(talk.remote(i)) for i in range(200)] == list(range(200))
    assert dk.get([talk.remote(i) for i in range(200, 600)], timeout=60) == list(range(200, 600))

    def missing() -> list[int]:
        with lock:
            seen = set(lines)
        return [i for i in range(600) if f"line {i}" not in seen]

    assert wait_until(lambda: not missing(), timeout=10), missing()[:20]
    assert len(lines) == 600, "a line arrived twice"


@pytest.mark.local_only("the local pool's workers and store (Ray's: tests/backends/ray)")
def test_status_reports_workers_and_store(cluster):
    dk.get(add.remote(1))
    ref = dk.put(b"x" * 200_000)
    status = dk.status()
    assert status["backend"] == "local"
    workers = status["workers"]
    assert len(workers) == 2
    for worker in workers:
        assert set(worker) >= {"id", "pid", "state", "current_task", "cpu_percent", "rss"}
        assert worker["rss"] > 0
    store = status["object_store"]
    assert store["num_objects"] >= 1 and store["used_bytes"] >= 200_000
    assert store["capacity"] > store["used_bytes"]
    del ref


def test_init_is_idempotent_and_checks_arguments():
    first = dk.init(2)
    assert dk.is_initialized()
    assert dk.init(2) is first
    assert dk.init() is first
    with pytest.raises(dk.DistkernelError, match="shutdown"):
        dk.init(3)
    dk.shutdown()
    dk.shutdown()  # twice is fine
    assert not dk.is_initialized()


def test_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        dk.init(0)
    with pytest.raises(ValueError, match="not a size"):
        dk.init(1, object_store_memory="lots")
    with pytest.raises(ValueError, match="not a known address"):
        dk.init(address="nowhere")
    assert not dk.is_initialized()


def test_api_starts_cluster_implicitly():
    assert not dk.is_initialized()
    assert dk.get(dk.put(3)) == 3
    assert dk.is_initialized()


def test_timeline_records_tasks(cluster):
    dk.get([add.remote(i) for i in range(3)])
    records = dk.timeline()
    assert len(records) == 3
    record = records[-1]
    assert record.name.endswith("add") and record.kind == "task"
    assert record.status == "finished" and record.worker_id in (1, 2)
    assert record.submitted <= record.started <= record.finished
    assert record.bytes_in > 0 and record.bytes_out > 0
    assert len(dk.timeline(last=2)) == 2


class CountsUnpickling:
    """Appends a line to a file each time it is unpickled: counts function loads in workers."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_count_load, (self.path,))


def _count_load(path):
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return CountsUnpickling(path)


@pytest.mark.local_only("counts the local pool's worker processes")
def test_function_is_shipped_and_unpickled_once_per_worker(cluster, tmp_path):
    log = tmp_path / "loads.txt"
    marker = CountsUnpickling(str(log))

    @dk.remote
    def uses_marker(i):
        return marker.path, i

    assert len(dk.get([uses_marker.remote(i) for i in range(40)])) == 40
    loads = log.read_text().split()
    assert 1 <= len(loads) <= 2  # once per worker that ran it, not once per call
    assert len(set(loads)) == len(loads)


def test_init_after_scaling_describes_the_pool_as_it_is():
    dk.init(2)
    runtime.engine().resize(3)
    assert dk.init(3).num_workers == 3
    assert dk.status()["num_workers"] == 3
    with pytest.raises(dk.DistkernelError, match="already running with 3 workers"):
        dk.init(2)
