"""One engine's benchmark run, in a fresh interpreter started by ``run.py``.

    run.py ──spawns──▶ python benchmarks/child.py --engine NAME --out FILE
                          start-up (import + init + first task), then each workload;
                          FILE is rewritten after every section, so a crash or a
                          timeout still leaves the figures measured so far.

A fresh process per engine keeps imports, start-up and RSS clean, and one
engine's leftovers cannot disturb the next. Only the standard library is
imported before the start-up clock starts; numpy and psutil come after, so the
start-up figure includes the engine's own imports and nothing of the harness.
Can be run by hand to debug one engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from typing import Any

import engines


# The task functions and the actor classes live here, in __main__, so that every
# engine ships them by value and no worker needs this directory on its path.
def noop(x: Any) -> Any:
    return x


def pause(seconds: float) -> float:
    import time as clock

    clock.sleep(seconds)
    return seconds


def shape_of(arr: Any) -> tuple[int, ...]:
    return tuple(arr.shape)


def filled_array(length: int) -> Any:
    import numpy

    return numpy.ones(length)


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count


class Spoon:
    """An item a Cup takes: laing it costs the cup 0.1 s and one unit of capacity."""

    def la(self) -> bool:
        return True


class Leborn:
    """An item a Cup does not take: laing it leaves the cup as it was."""

    def la(self) -> bool:
        return False


class Cup:
    """The actor of the Leborn round: ``is_good`` once ``capacity`` laable items went in."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def la_with_laable_item(self, item: Any) -> None:
        if item.la():
            time.sleep(0.1)
            self.capacity -= 1

    def is_good(self) -> bool:
        return self.capacity <= 0


tasks = sys.modules[__name__]

#: Workload sizes: (quick, full).
SIZES = {
    "rtt_n": (300, 1000), "rtt_warmup": (30, 100),
    "tput_n": (2000, 5000), "tput_repeats": (1, 3), "loop_n": (20_000, 100_000),
    "big_repeats": (3, 5), "huge_repeats": (0, 3),
    "actor_n": (300, 1000), "actor_warmup": (30, 100),
    "leborn_rounds": (10, 30),
    "paired_rounds": (3, 7), "paired_rtt_n": (200, 500), "paired_actor_n": (200, 500),
    "paired_big_turns": (3, 15), "paired_call_turns": (2, 10), "paired_tput_turns": (1, 3),
}
MB = 1 << 20


def sizes(args: argparse.Namespace) -> dict[str, int]:
    """The workload sizes of this run (``--quick`` or full)."""
    return {key: pair[0] if args.quick else pair[1] for key, pair in SIZES.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True, choices=sorted(engines.ENGINES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--paired", action="store_true",
                        help="with --engine distkernel-ray: plain Ray on the same Ray, in turns")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    return parser.parse_args(argv)


def start_up(engine: engines.Engine, workers: int) -> dict[str, float]:
    """From before the engine's import to the first tiny task's result."""
    t0 = time.perf_counter()
    phases = engine.start(workers)
    t1 = time.perf_counter()
    value = engine.get(engine.submit(noop, 1))
    t2 = time.perf_counter()
    if value != 1:
        msg = f"first task returned {value!r}, expected 1"
        raise RuntimeError(msg)
    return {**phases, "first_task_s": t2 - t1, "total_s": t2 - t0}


def settle_memory(engine: engines.Engine) -> dict[str, Any]:
    """Idle memory after start-up and one task.

    Waits 2 s first: workers that did not run the first task may still be
    importing, and Ray finishes starting its helpers in the background; the
    figure is meant to be the idle steady state, not a snapshot mid-boot.
    """
    import workloads

    time.sleep(2.0)
    return workloads.memory(engine)


def sections(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The workloads after start-up and memory, as (name, thunk taking the engine)."""
    import workloads

    size = sizes(args)
    plan: list[tuple[str, Any]] = [
        ("round_trip", lambda e: workloads.round_trip(e, tasks, size["rtt_n"], size["rtt_warmup"])),
        ("throughput", lambda e: workloads.throughput(e, tasks, size["tput_n"],
                                                      size["tput_repeats"])),
        ("submit_loop", lambda e: workloads.submit_loop(e, tasks, size["loop_n"])),
        ("panel", lambda e: workloads.panel_cost(e, tasks, size["tput_n"],
                                                 size["tput_repeats"])),
        ("batched_map", lambda e: workloads.batched_map(e, tasks, size["tput_n"])),
        ("object_100MB", lambda e: workloads.large_object(e, tasks, 100 * MB,
                                                          size["big_repeats"], args.workers)),
    ]
    if size["huge_repeats"]:
        plan.append(("object_1GB", lambda e: workloads.large_object(e, tasks, 1024 * MB,
                                                                   size["huge_repeats"],
                                                                   args.workers)))
    plan.append(("actor", lambda e: workloads.actor(e, tasks, size["actor_n"],
                                                    size["actor_warmup"])))
    plan.append(("leborn_round", lambda e: workloads.leborn_round(e, tasks,
                                                                  size["leborn_rounds"])))
    return plan


def run_section(result: dict[str, Any], name: str, thunk: Any, engine: Any,
                out: str | None) -> None:
    """Run one workload; record its figures, or why it was skipped or failed (and write
    ``result`` to ``out``, if given)."""
    t0 = time.perf_counter()
    try:
        result[name] = thunk(engine)
    except engines.Unsupported as exc:
        result[name] = {"skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failed workload is reported, the run goes on
        result[name] = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()}
    result.setdefault("section_s", {})[name] = time.perf_counter() - t0
    if out is not None:
        write(result, out)


def write(result: dict[str, Any], out: str) -> None:
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, out)


def describe_environment(engine: engines.Engine, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    return {"engine": engine.name, "engine_version": engine.version(), "workers": args.workers,
            "quick": args.quick, "python": platform.python_version(),
            "numpy": np.__version__, "cpus": os.cpu_count(), "pid": os.getpid()}


def final_processes(engine: engines.Engine) -> list[tuple[int, float]]:
    """(pid, create_time) of everything alive before shutdown, for run.py's leak check."""
    rows = []
    for _, process in engine.processes()[1:]:
        try:
            rows.append((process.pid, process.create_time()))
        except Exception:  # noqa: BLE001 - best effort: a process that vanished is not listed
            continue
    return rows


def run(args: argparse.Namespace, engine: engines.Engine, result: dict[str, Any]) -> None:
    result["startup"] = start_up(engine, args.workers)
    write(result, args.out)
    result["env"] = describe_environment(engine, args)
    result["memory"] = settle_memory(engine)
    write(result, args.out)
    for name, thunk in sections(args):
        run_section(result, name, thunk, engine, args.out)
    result["final_processes"] = final_processes(engine)


def paired_sections(args: argparse.Namespace) -> list[tuple[str, Any, int]]:
    """The workloads of the paired run, each with its number of turns a round (see
    ``run_paired``); 0: it takes both engines and runs their calls in turns itself
    (``workloads.in_turns``)."""
    import workloads

    size = sizes(args)
    calls = size["paired_call_turns"]
    return [
        ("round_trip", lambda pair: workloads.round_trips_in_turns(
            pair, tasks, size["paired_rtt_n"], 20, calls), 0),
        ("throughput", lambda e: workloads.throughput(e, tasks, size["tput_n"], 1),
         size["paired_tput_turns"]),
        ("actor", lambda pair: workloads.actors_in_turns(
            pair, tasks, size["paired_actor_n"], 20, calls), 0),
        ("object_100MB", lambda e: workloads.large_object(e, tasks, 100 * MB, 1, args.workers),
         size["paired_big_turns"]),
    ]


def run_paired(args: argparse.Namespace, ours: engines.Engine, result: dict[str, Any]) -> None:
    """distkernel on Ray against plain Ray calls on the very same Ray, in turns.

    Two fresh Rays differ from each other by more than our front costs (Ray's own
    figures move up to 2x between runs here), so each round runs every workload on
    both, the first engine of a round alternating: both see the same machine, cluster
    and moment. ``rounds`` holds each round's figures per engine.

    Each workload runs in turns, several a round in a full run, the engine going first
    alternating at each turn: this machine holds a speed for a while (its memory fresh
    pages or not for a few hundred milliseconds, its CPUs one of two speeds for seconds),
    which a block of one engine would have to itself. A round's figure of the throughput
    and the 100 MB workloads is the median over their turns; the round trips (tasks, and
    one actor's calls on each engine) take blocks of their calls in turns, and a round's
    figure is over all its calls."""
    result["startup"] = start_up(ours, args.workers)
    plain = engines.RayEngine()
    plain.join()
    result["env"] = {**describe_environment(ours, args), "ray_version": plain.version()}
    plan = paired_sections(args)
    rounds = sizes(args)["paired_rounds"]
    result["rounds"] = []
    for index in range(rounds):
        pair = (ours, plain) if index % 2 == 0 else (plain, ours)
        figures: dict[str, Any] = {ours.name: {}, plain.name: {}}
        for name, thunk, turns in plan:
            if not turns:  # both engines at once, in turns of its own
                both: dict[str, Any] = {}
                run_section(both, name, thunk, list(pair), None)
                for engine in pair:  # (a failure or skip stands for both)
                    figures[engine.name][name] = both[name].get(engine.name, both[name])
                continue
            taken: dict[str, list[Any]] = {ours.name: [], plain.name: []}
            for turn in range(turns):
                for engine in pair if turn % 2 == 0 else pair[::-1]:
                    one: dict[str, Any] = {}
                    run_section(one, name, thunk, engine, None)
                    taken[engine.name].append(one[name])
            for engine_name, each in taken.items():
                figures[engine_name][name] = each[0] if turns == 1 else over_turns(each)
        result["rounds"].append(figures)
        write(result, args.out)
    result["final_processes"] = final_processes(ours)


def over_turns(turns: list[Any]) -> Any:
    """One round's figures of a workload run in several turns: each time the median over
    the turns, each list of times all of them, each flag true if true in every turn, the
    rest as the last turn had them; a turn that failed or was skipped stands for all."""
    import statistics

    failed = next((t for t in turns if "error" in t or "skipped" in t), None)
    if failed is not None:
        return failed
    merged = dict(turns[-1])
    for key, value in turns[-1].items():
        if isinstance(value, bool):
            merged[key] = all(t[key] for t in turns)
        elif isinstance(value, float) and key.endswith("_s"):
            merged[key] = statistics.median(t[key] for t in turns)
        elif isinstance(value, list) and key.endswith("_s"):
            merged[key] = [v for t in turns for v in t[key]]
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.paired and args.engine != "distkernel-ray":
        sys.exit("--paired runs distkernel on Ray against plain Ray: use --engine distkernel-ray")
    # run.py ends a child that overruns with SIGTERM: turn it into SystemExit so the
    # finally below still shuts the engine down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engine = engines.make(args.engine)
    result: dict[str, Any] = {"engine": args.engine}
    try:
        (run_paired if args.paired else run)(args, engine, result)
        return 0
    except Exception as exc:  # noqa: BLE001 - a failed workload is reported, the run goes on
        result["fatal"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        return 1
    finally:
        t0 = time.perf_counter()
        try:
            engine.shutdown()
        finally:
            result["shutdown_s"] = time.perf_counter() - t0
            write(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
