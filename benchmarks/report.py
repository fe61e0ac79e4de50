"""Turn the children's JSON results into one Markdown table, with ratios and notes.

The table is meant to be pasted into the README as is: one row per figure, one
column per engine, then distkernel ÷ Ray and distkernel ÷ Pool. Missing
figures show why (n/a, skipped, error) and the reasons are listed below it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

NAMES = {"distkernel": "distkernel", "ray": "Ray", "pool": "Pool",
         "distkernel-ray": "distkernel on Ray"}


@dataclass(frozen=True)
class Metric:
    """One row: where the number is in a child's result, and how to show it."""

    section: str
    key: str
    label: str
    unit: str  # "s", "ms", "us", "MB", "/s", "count" or "flag"
    lower_is_better: bool = True


def _object_rows(section: str, size: str) -> list[Metric]:
    return [
        Metric(section, "copyto_s", f"{size}: numpy np.empty + copyto (put baseline)", "ms"),
        Metric(section, "copy_s", f"{size}: numpy arr.copy() (put baseline)", "ms"),
        Metric(section, "put_s", f"{size}: put", "ms"),
        Metric(section, "get_s", f"{size}: get in the driver", "ms"),
        Metric(section, "get_writeable", f"{size}: get result writeable", "flag"),
        Metric(section, "task_ref_s", f"{size}: task on a stored object (ref in, shape out)", "ms"),
        Metric(section, "task_arg_s", f"{size}: task with the array as argument", "ms"),
        Metric(section, "task_result_s", f"{size}: task making and returning an array, get",
               "ms"),
    ]


# A real multiplication sign in the README table, spelled by name so that ruff's
# confusable-character rule (RUF001) does not take it for an "x".
_LEBORN_ROUND = "Leborn round (3 \N{MULTIPLICATION SIGN} call + get)"

METRICS: list[Metric] = [
    Metric("startup", "total_s", "start-up to first result (import + init + 1 task)", "s"),
    Metric("startup", "import_s", "  of which import", "s"),
    Metric("startup", "init_s", "  of which init", "s"),
    Metric("startup", "first_task_s", "  of which first task", "s"),
    Metric("round_trip", "median_s", "tiny task round trip, median", "us"),
    Metric("round_trip", "p99_s", "tiny task round trip, p99", "us"),
    Metric("throughput", "tasks_per_s", "throughput: {n} tiny tasks, then one get", "/s", False),
    Metric("throughput", "submit_per_s", "  submission alone", "/s", False),
    Metric("submit_loop", "total_s", "{n} tiny tasks submitted in a loop, then one get", "s"),
    Metric("submit_loop", "submit_s", "  of which the submitting loop", "s"),
    Metric("submit_loop", "driver_rss_growth_bytes", "  driver RSS growth (handles alive)",
           "MB"),
    Metric("panel", "without_per_s", "throughput, {n} tiny tasks, panel closed (alternated)",
           "/s", False),
    Metric("panel", "with_per_s", "  the same with the side panel open", "/s", False),
    Metric("panel", "update_at_1000_queued_s", "one panel update with 1,000 tasks queued, median",
           "ms"),
    Metric("batched_map", "tasks_per_s", "Pool.map_async of {n} (batched; reference)", "/s", False),
    *_object_rows("object_100MB", "100 MB"),
    *_object_rows("object_1GB", "1 GB"),
    Metric("memory", "rss_bytes", "idle memory: RSS, sum over all processes", "MB"),
    Metric("memory", "uss_bytes", "idle memory: USS, sum over all processes", "MB"),
    Metric("memory", "driver_rss_bytes", "  driver RSS", "MB"),
    Metric("memory", "worker_rss_bytes", "  workers RSS", "MB"),
    Metric("memory", "service_rss_bytes", "  other engine processes RSS", "MB"),
    Metric("memory", "processes", "  processes counted", "count"),
    Metric("actor", "create_s", "actor creation to first result", "ms"),
    Metric("actor", "median_s", "actor call round trip, median", "us"),
    Metric("actor", "p99_s", "actor call round trip, p99", "us"),
    Metric("leborn_round", "median_s", f"{_LEBORN_ROUND}, median", "ms"),
    Metric("leborn_round", "p99_s", f"{_LEBORN_ROUND}, p99", "ms"),
]

SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "MB": 1 / (1 << 20), "/s": 1.0, "count": 1.0}


def number(result: dict[str, Any], metric: Metric) -> float | None:
    """The raw figure, or None when the engine has none."""
    value = result.get(metric.section, {}).get(metric.key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def cell(result: dict[str, Any] | None, metric: Metric) -> str:
    if result is None:
        return "not run"
    section = result.get(metric.section)
    if section is None:
        return "error" if "fatal" in result else "—"
    if "skipped" in section:
        return "n/a"
    if "error" in section:
        return "error"
    if metric.unit == "flag":
        flags = section.get(metric.key)
        return "n/a" if flags is None else "/".join(str(f).lower() for f in flags)
    value = number(result, metric)
    return "n/a" if value is None else _format(value, metric.unit)


def _format(value: float, unit: str) -> str:
    scaled = value * SCALE[unit]
    if unit == "count" or scaled == 0:
        return f"{scaled:.0f}"
    if unit == "s":
        return f"{scaled:.2f} s" if scaled >= 1 else f"{scaled * 1e3:.0f} ms"
    digits = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
    suffix = {"ms": " ms", "us": " µs", "MB": " MB", "/s": "/s"}[unit]
    return f"{scaled:,.{digits}f}{suffix}"


def ratio(ours: dict[str, Any] | None, other: dict[str, Any] | None, metric: Metric) -> str:
    """distkernel ÷ other, for numbers only (flags and counts have no ratio)."""
    if ours is None or other is None or metric.unit in ("flag", "count"):
        return ""
    a, b = number(ours, metric), number(other, metric)
    if not a or not b:  # missing, or 0 (e.g. Pool has no service processes)
        return ""
    return f"{a / b:.2f}x"


def label(metric: Metric, results: dict[str, dict[str, Any]]) -> str:
    """The row label, with the task count filled in and the better direction marked."""
    n = next((r.get(metric.section, {}).get("n") for r in results.values()
              if isinstance(r.get(metric.section, {}).get("n"), int)), "N")
    arrow = "" if metric.unit in ("flag", "count") else (" ↓" if metric.lower_is_better else " ↑")
    return metric.label.format(n=n).replace("  ", "↳ ", 1) + arrow


def table(results: dict[str, dict[str, Any]], engines: list[str]) -> str:
    """The Markdown table; ratio columns appear for the engines that ran."""
    others = [e for e in engines
              if e not in ("distkernel", "distkernel-ray") and "distkernel" in engines]
    on_ray = "distkernel-ray" in engines and "ray" in engines  # our front's cost on Ray
    head = ["workload", *(NAMES[e] for e in engines), *(f"dk ÷ {NAMES[e]}" for e in others),
            *(["dk on Ray ÷ Ray"] if on_ray else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours = results.get("distkernel")
    for metric in METRICS:
        if all(metric.section not in (results.get(e) or {}) for e in engines):
            continue  # e.g. the 1 GB rows in --quick mode
        if metric.section == "batched_map" and "pool" not in engines:
            continue  # a Pool-only reference row
        row = [label(metric, results), *(cell(results.get(e), metric) for e in engines),
               *(ratio(ours, results.get(e), metric) for e in others),
               *([ratio(results.get("distkernel-ray"), results.get("ray"), metric)]
                 if on_ray else [])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def notes(results: dict[str, dict[str, Any]], engines: list[str]) -> list[str]:
    """Skips, errors, leaks and integrity failures, one bullet each."""
    out = []
    for engine in engines:
        result = results.get(engine) or {}
        name = NAMES[engine]
        for key in ("fatal", "not_run"):
            if key in result:
                out.append(f"{name}: {result[key]}")
        for section, value in result.items():
            # batched_map is a Pool-only reference row: its skips elsewhere are expected
            if isinstance(value, dict) and "skipped" in value and section != "batched_map":
                out.append(f"{name} {section}: n/a — {value['skipped']}")
            if isinstance(value, dict) and "error" in value:
                out.append(f"{name} {section}: ERROR — {value['error']}")
            if isinstance(value, dict) and value.get("intact") is False:
                out.append(f"{name} {section}: get returned a wrong value")
        out.extend(f"{name}: {leak}" for leak in result.get("leaks", []))
    return out


LEGEND = """\
↓ lower is better, ↑ higher is better; a ratio is distkernel's figure ÷ the other
engine's (below 1x is better for ↓ rows, above 1x for ↑ rows). Every figure comes from a
fresh interpreter per engine. Start-up is timed from before the engine's `import` (only
the standard library loaded) to the first tiny task's result; Pool = `Pool(n)` +
`apply`. Round trip = submit + get of a no-op task, sequential, after warm-up (Pool:
`apply`). Throughput = tasks submitted one by one (Pool: `apply_async`), then one get of
all; the loop row is the same, once, at a size where the driver's cost per task
dominates, with the driver's RSS growth while the handles are alive. put = store a
float64 array; get = read it back in the driver (distkernel and Ray return read-only
zero-copy views); task on a stored object = pass the ref, the task returns `arr.shape`;
task with the array as argument = the array itself is the argument (distkernel and Ray
store it implicitly; Pool pickles it through its pipe); task making and returning an
array = the task fills a new array of the size (`np.ones`) and returns it, then the
driver gets it (each worker once untimed first: its first array that large costs it
fresh memory) (a view for distkernel and Ray, a copy through the pipe for Pool); the
numpy copies are the same-size memcpy baselines for put. Medians over repeats, each
repeat freeing its object. Idle memory = driver + every process the engine started, 2 s
after start-up and one task; RSS double-counts shared pages (forked Pool workers, Ray's
shared store), USS does not. Leborn round = on one `Cup(3)` actor (created and ready
beforehand, untimed), three times `cup.la_with_laable_item(Leborn())` without waiting
for it, then a get of `cup.is_good()`, checked to be False; the same actor for every
round, and with a few dozen rounds the p99 is the slowest round."""


#: The rows of the paired run (``run.py --paired-ray``): what our front may add to Ray.
PAIRED_SECTIONS = ("round_trip", "throughput", "actor", "object_100MB")
PAIRED_METRICS = [m for m in METRICS if m.section in PAIRED_SECTIONS
                  and m.unit != "flag" and m.key not in ("copyto_s", "copy_s")]

PAIRED_LEGEND = """\
One interpreter and one Ray: distkernel on Ray (`init(address="ray")`) and plain Ray
calls on that same Ray. Each round runs every workload on both in turns, the engine going
first alternating at each turn (a full run: three turns of the throughput and fifteen of
the 100 MB workloads, a round's figure their median; the round trips, tasks' and one
actor's on each engine, in ten blocks of their calls, a round's figure over all its
calls); a figure is the median over the rounds,
the first ratio the ratio of those medians, then the lowest and the highest ratio of a
single round. A ratio is
distkernel's figure ÷ Ray's (below 1x is better for ↓ rows, above 1x for ↑ rows)."""


def paired_table(result: dict[str, Any]) -> str:
    """The paired run's Markdown table (see PAIRED_LEGEND)."""
    rounds = result.get("rounds", [])
    head = ["workload", NAMES["distkernel-ray"], NAMES["ray"], "dk on Ray ÷ Ray",
            "single rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in PAIRED_METRICS:
        pairs = [(a, b) for a, b in ((number(r.get("distkernel-ray", {}), metric),
                                      number(r.get("ray", {}), metric)) for r in rounds)
                 if a and b]
        row = [label(metric, {"ray": rounds[0]["ray"]} if rounds else {})]
        if pairs:
            ours = statistics.median(a for a, _ in pairs)
            theirs = statistics.median(b for _, b in pairs)
            each = sorted(a / b for a, b in pairs)
            row += [_format(ours, metric.unit), _format(theirs, metric.unit),
                    f"{ours / theirs:.2f}x", f"{each[0]:.2f}x to {each[-1]:.2f}x"]
        else:
            row += ["n/a", "n/a", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_notes(result: dict[str, Any]) -> list[str]:
    """The paired run's failures, leaks and wrong values, one bullet each."""
    out = [f"{key}: {result[key]}" for key in ("fatal", "not_run") if key in result]
    for index, figures in enumerate(result.get("rounds", []), 1):
        for engine, sections in figures.items():
            out.extend(f"round {index}, {NAMES[engine]}: {line}"
                       for line in notes({engine: sections}, [engine]))
    out.extend(f"leak: {leak}" for leak in result.get("leaks", []))
    return out
