"""The workloads (SPEC §8), each a function of an engine adapter returning plain numbers.

Every workload takes ``tasks``, the namespace that holds the task functions and
the actor classes. They are defined in the child's ``__main__`` so that every
engine ships them by value (cloudpickle for distkernel and Ray, dill for the
Pool) and no worker has to import this directory.

Only ``time.perf_counter`` is used for timing. Nothing here asserts on a time:
the figures are reported, never judged.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from engines import Engine, Unsupported


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median and p99 (in seconds) of a list of durations."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_s": statistics.median(ordered), "p99_s": p99, "n": len(ordered)}


def round_trip(engine: Engine, tasks: Any, n: int, warmup: int) -> dict[str, float]:
    """Submit one tiny task and wait for it, ``n`` times in a row: the latency floor."""
    return round_trips_in_turns([engine], tasks, n, warmup, 1)[engine.name]


def throughput(engine: Engine, tasks: Any, n: int, repeats: int) -> dict[str, float]:
    """Submit ``n`` tiny tasks one by one, then one get of all; median over repeats.

    ``submit_per_s`` (submission alone) tells a slow driver apart from slow workers.
    """
    totals, submits = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        handles = [engine.submit(tasks.noop, i) for i in range(n)]
        t1 = time.perf_counter()
        engine.get(handles)
        totals.append(time.perf_counter() - t0)
        submits.append(t1 - t0)
    return {"tasks_per_s": n / statistics.median(totals),
            "submit_per_s": n / statistics.median(submits), "n": n, "repeats": repeats}


def submit_loop(engine: Engine, tasks: Any, n: int) -> dict[str, float]:
    """``n`` tiny tasks submitted in a loop, as a notebook's list comprehension does, then
    one get of all: once, at a size where the driver's cost per task dominates.

    The driver's RSS is read before and after (the handles still alive): memory that
    grows with ``n`` beyond the handles shows as a large ``driver_rss_growth_bytes``.
    """
    import psutil

    driver = psutil.Process()
    rss_before = driver.memory_info().rss
    t0 = time.perf_counter()
    handles = [engine.submit(tasks.noop, i) for i in range(n)]
    t1 = time.perf_counter()
    values = engine.get(handles)
    t2 = time.perf_counter()
    if values[-1] != n - 1:
        msg = f"the last of {n} tasks returned {values[-1]!r}, expected {n - 1}"
        raise RuntimeError(msg)
    return {"total_s": t2 - t0, "submit_s": t1 - t0, "n": n,
            "driver_rss_growth_bytes": driver.memory_info().rss - rss_before}


def panel_cost(engine: Engine, tasks: Any, n: int, repeats: int) -> dict[str, Any]:
    """What an open side panel costs the kernel: tiny-task throughput without and with a
    panel open (its updates pushed four times a second by its thread), alternated over
    ``repeats``; then the time to make one update while 1,000 tasks are queued."""
    without, with_panel, sent = [], [], 0
    for _ in range(repeats):
        without.append(throughput(engine, tasks, n, 1)["tasks_per_s"])
        panel = engine.open_panel()
        try:
            with_panel.append(throughput(engine, tasks, n, 1)["tasks_per_s"])
        finally:
            panel.close()
        sent += panel.comm.sent
    panel = engine.open_panel()
    try:
        busy = [engine.submit(tasks.pause, 3.0) for _ in range(4)]  # every worker busy
        queued = [engine.submit(tasks.noop, i) for i in range(1000)]
        costs = []
        for _ in range(50):
            t0 = time.perf_counter()
            update = panel.channel.update()
            costs.append(time.perf_counter() - t0)
        queued_seen = update["cluster"]["queued"]
        engine.get(busy + queued)
    finally:
        panel.close()
    return {"without_per_s": statistics.median(without),
            "with_per_s": statistics.median(with_panel), "updates_sent": sent,
            "update_at_1000_queued_s": statistics.median(costs),
            "update_p99_s": sorted(costs)[-1], "queued_seen": queued_seen, "n": n}


def batched_map(engine: Engine, tasks: Any, n: int) -> dict[str, float]:
    """Pool.map_async of ``n`` tiny items: the Pool's batched best case, for reference."""
    t0 = time.perf_counter()
    engine.map_async(tasks.noop, list(range(n)))
    return {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}


def copy_baseline(arr: np.ndarray, repeats: int) -> dict[str, float]:
    """What a put cannot beat: one memcpy into fresh memory (page faults included)."""
    into_empty, plain = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst = np.empty_like(arr)
        np.copyto(dst, arr)
        into_empty.append(time.perf_counter() - t0)
        del dst
        t0 = time.perf_counter()
        dst = arr.copy()
        plain.append(time.perf_counter() - t0)
        del dst
    return {"copyto_s": statistics.median(into_empty), "copy_s": statistics.median(plain)}


def large_object(engine: Engine, tasks: Any, nbytes: int, repeats: int,
                 workers: int) -> dict[str, Any]:
    """put / get / task-on-ref / task-with-array / task-returning-array of one float64
    array of ``nbytes``.

    Each repeat stores a fresh object and frees it (drops every ref and view)
    before the next, so no repeat reads a cache or fills the store.
    """
    arr = np.arange(nbytes // 8, dtype=np.float64)
    result: dict[str, Any] = {"nbytes": arr.nbytes, **copy_baseline(arr, repeats)}
    try:
        result.update(_stored_object(engine, tasks, arr, repeats))
    except Unsupported as exc:
        result["store_skipped"] = str(exc)
    result["task_arg_s"] = _median_time(
        lambda: engine.get(engine.submit(tasks.shape_of, arr)), repeats)
    # Each worker's first array this large costs its process fresh memory (about 2 s per
    # GiB here, for every engine): warm every worker once, untimed, so that the repeats
    # measure the steady state and not which worker happened to take them.
    warm = [engine.submit(tasks.filled_array, arr.size) for _ in range(workers)]
    for handle in warm:
        _check_filled(engine.get(handle), arr.size)
    del warm, handle
    result["task_result_s"] = _median_time(
        lambda: _check_filled(engine.get(engine.submit(tasks.filled_array, arr.size)),
                              arr.size), repeats)
    return result


def _check_filled(result: np.ndarray, length: int) -> None:
    if result.shape != (length,) or result[0] != 1.0 or result[-1] != 1.0:
        msg = f"a task's array result came back wrong: shape {result.shape}"
        raise AssertionError(msg)


def _stored_object(engine: Engine, tasks: Any, arr: np.ndarray, repeats: int) -> dict[str, Any]:
    put_s, get_s, task_s, writeable, intact = [], [], [], set(), True
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = engine.put(arr)
        put_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = engine.get(ref)
        get_s.append(time.perf_counter() - t0)
        writeable.add(bool(got.flags.writeable))
        intact = intact and got.shape == arr.shape and got[0] == arr[0] and got[-1] == arr[-1]
        t0 = time.perf_counter()
        shape = engine.get(engine.submit(tasks.shape_of, ref))
        task_s.append(time.perf_counter() - t0)
        intact = intact and tuple(shape) == arr.shape
        del got, ref
    return {"put_s": statistics.median(put_s), "get_s": statistics.median(get_s),
            "task_ref_s": statistics.median(task_s), "get_writeable": sorted(writeable),
            "intact": intact, "put_all_s": put_s, "get_all_s": get_s, "task_ref_all_s": task_s}


def _median_time(action: Any, repeats: int) -> float:
    durations = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        durations.append(time.perf_counter() - t0)
    return statistics.median(durations)


def in_turns(calls: dict[str, Any], n: int, turns: int) -> dict[str, list[float]]:
    """``n`` timed calls of each of ``calls`` (name -> a call that waits for its answer),
    in ``turns`` blocks, the first going first at even turns and last at odd ones: every
    caller meets the machine's speed of the moment as often as the others."""
    names = list(calls)
    durations: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(turns):
        for name in names if turn % 2 == 0 else names[::-1]:
            call, taken = calls[name], durations[name]
            for _ in range(n // turns):
                t0 = time.perf_counter()
                call()
                taken.append(time.perf_counter() - t0)
    return durations


def round_trips_in_turns(pair: list[Engine], tasks: Any, n: int, warmup: int,
                         turns: int) -> dict[str, dict[str, float]]:
    """One tiny task submitted and waited for, ``n`` times on each engine of ``pair``,
    their calls ``in_turns``; each engine's median and p99."""
    def one(engine: Engine) -> Any:
        return lambda: engine.get(engine.submit(tasks.noop, 1))

    calls = {engine.name: one(engine) for engine in pair}
    for call in calls.values():
        for _ in range(warmup):
            call()
    return {name: summarize(taken) for name, taken in in_turns(calls, n, turns).items()}


def actors_in_turns(pair: list[Engine], tasks: Any, n: int, warmup: int,
                    turns: int) -> dict[str, dict[str, Any]]:
    """One actor on each engine of ``pair``, created in turn (to its first result), then
    ``n`` method calls each, ``in_turns``; each engine's creation time, median and p99."""
    handles: dict[str, Any] = {}
    created: dict[str, float] = {}
    try:
        for engine in pair:
            t0 = time.perf_counter()
            handle = handles[engine.name] = engine.create_actor(tasks.Counter)
            engine.get(engine.call(handle, "incr"))
            created[engine.name] = time.perf_counter() - t0
            for _ in range(warmup):
                engine.get(engine.call(handle, "incr"))

        def one(engine: Engine) -> Any:
            handle = handles[engine.name]
            return lambda: engine.get(engine.call(handle, "incr"))

        taken = in_turns({engine.name: one(engine) for engine in pair}, n, turns)
    finally:
        for engine in pair:
            if engine.name in handles:
                engine.kill_actor(handles[engine.name])
    return {name: {"create_s": created[name], **summarize(durations)}
            for name, durations in taken.items()}


def actor(engine: Engine, tasks: Any, n: int, warmup: int) -> dict[str, Any]:
    """Actor creation to first result, then sequential method-call round trips."""
    return actors_in_turns([engine], tasks, n, warmup, 1)[engine.name]


def leborn_round(engine: Engine, tasks: Any, rounds: int) -> dict[str, Any]:
    """One ``Cup(3)`` actor; a round is three times (call with a Leborn, then get is_good).

    A Leborn is not laable, so the cup keeps its capacity and every ``is_good``
    must answer False; any other answer fails the workload. Creating the cup and
    its first ``is_good`` (it is ready) are not timed; all rounds use that one cup.
    """
    cup = engine.create_actor(tasks.Cup, 3)
    try:
        _expect_not_good(engine.get(engine.call(cup, "is_good")), "on a new Cup(3)")
        durations = []
        for i in range(rounds):
            t0 = time.perf_counter()
            for j in range(3):
                engine.call(cup, "la_with_laable_item", tasks.Leborn())
                _expect_not_good(engine.get(engine.call(cup, "is_good")),
                                 f"after Leborn {j + 1} of round {i + 1}")
            durations.append(time.perf_counter() - t0)
    finally:
        engine.kill_actor(cup)
    return summarize(durations)


def _expect_not_good(answer: Any, when: str) -> None:
    if answer is not False:
        msg = (f"Cup.is_good() {when} returned {answer!r}, expected False: a Leborn "
               "must leave the cup's capacity unchanged")
        raise RuntimeError(msg)


def memory(engine: Engine) -> dict[str, Any]:
    """RSS and USS summed over the driver and every process the engine started.

    RSS counts shared pages once per process (forked Pool workers share most of
    the driver's pages, Ray's processes share the plasma mapping), so the sum
    over-states; USS (pages only that process has) under-states shared
    libraries but does not double-count. Both are reported, per role too.
    """
    rows = []
    for role, process in engine.processes():
        try:
            rows.append(_process_memory(role, process))
        except Exception:  # noqa: BLE001 - it exited between listing and reading: not idle memory
            continue
    totals: dict[str, Any] = {"processes": len(rows), "pids": [r["pid"] for r in rows]}
    for key in ("rss", "uss"):
        totals[f"{key}_bytes"] = sum(r[key] for r in rows if r[key] is not None)
        for role in ("driver", "worker", "service"):
            totals[f"{role}_{key}_bytes"] = sum(r[key] or 0 for r in rows if r["role"] == role)
    totals["roles"] = {role: sum(r["role"] == role for r in rows)
                       for role in ("driver", "worker", "service")}
    totals["detail"] = rows
    return totals


def _process_memory(role: str, process: Any) -> dict[str, Any]:
    try:
        info = process.memory_full_info()
        uss = info.uss
    except Exception:  # noqa: BLE001 - USS needs /proc/<pid>/smaps; fall back to RSS only
        info, uss = process.memory_info(), None
    return {"role": role, "pid": process.pid, "create_time": process.create_time(),
            "name": process.name(), "rss": info.rss, "uss": uss}
