"""Benchmark distkernel's local engine against Ray and multiprocess.Pool (SPEC §8).

    .venv/bin/python benchmarks/run.py [--engines distkernel,pool,ray] [--workers 2]
                                       [--quick] [--json out.json]
    .venv/bin/python benchmarks/run.py --paired-ray [--quick]

::

    run.py (this process: no engine imported here)
      ├─ child.py --engine distkernel ─▶ JSON file ─┐   one engine at a time, each in
      ├─ child.py --engine pool       ─▶ JSON file ─┤   a fresh interpreter and its own
      └─ child.py --engine ray        ─▶ JSON file ─┘   session (process group)
                                                    └─▶ Markdown table + ratios

After each child this process checks that nothing it started outlived it (the
child's worker pids, distkernel's shared-memory segments) and ends what did, by
pid, reporting it as a leak. ``--quick`` skips the 1 GB workloads and shrinks
the counts (about a minute); the full run takes a few minutes on 2 cores.

``--paired-ray`` measures what our front adds to Ray more closely than two fresh Rays
can (their own figures differ by up to 2x): one child runs distkernel on Ray and plain
Ray calls on that same Ray, workload by workload in rounds, each going first in turn.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import report

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
#: The module each engine needs, to skip an engine that is not installed.
REQUIRES = {"distkernel": "distkernel", "pool": "multiprocess", "ray": "ray",
            "distkernel-ray": "ray"}
DEFAULT_ENGINES = "distkernel,pool,ray"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help=f"comma-separated, in column order (default {DEFAULT_ENGINES})")
    parser.add_argument("--workers", type=int, default=2, help="workers per engine (default 2)")
    parser.add_argument("--quick", action="store_true", help="no 1 GB workloads, fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="also write every raw figure here")
    parser.add_argument("--paired-ray", action="store_true",
                        help="distkernel on Ray against plain Ray on one Ray, in turns: "
                             "what our front adds to Ray (ignores --engines)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per engine before it is stopped (default 240 quick, 900)")
    args = parser.parse_args(argv)
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_list if e not in REQUIRES]
    if unknown or not args.engine_list:
        parser.error(f"--engines: unknown {unknown or 'empty list'}; valid: {', '.join(REQUIRES)}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def run_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """One child, start to finish; its results plus wall time, exit status and leaks."""
    if importlib.util.find_spec(REQUIRES[engine]) is None:
        return {"not_run": f"not installed (no module {REQUIRES[engine]!r})"}
    with tempfile.TemporaryDirectory(prefix="dk-bench-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "child.log"
        command = [sys.executable, str(CHILD), "--engine", engine,
                   "--workers", str(args.workers), "--out", str(out)]
        if args.quick:
            command.append("--quick")
        if args.paired_ray:
            command.append("--paired")
        t0 = time.perf_counter()
        with open(log, "wb") as log_file:
            returncode = _wait_child(command, log_file, _timeout(args))
        result = _load(out)
        result.update(wall_s=time.perf_counter() - t0, returncode=returncode)
        if returncode != 0:
            result["log_tail"] = log.read_text(errors="replace")[-3000:]
    result["leaks"] = reap_leftovers(result)
    return result


def _timeout(args: argparse.Namespace) -> float:
    if args.timeout is not None:
        return args.timeout
    return 240.0 if args.quick else 900.0


def _wait_child(command: list[str], log_file: Any, timeout: float) -> int:
    """Run the child in its own session; on overrun SIGTERM (it shuts its engine
    down), then SIGKILL the whole group."""
    child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=HERE.parent)
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s; stopping it", file=sys.stderr)
        child.terminate()
        try:
            return child.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            return child.wait()
    except BaseException:  # Ctrl-C in the parent: do not leave the child running
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"fatal": f"no results from the child ({type(exc).__name__}: {exc})"}


def reap_leftovers(result: dict[str, Any]) -> list[str]:
    """Processes and segments of the child that outlived it: end them and say so."""
    leaks = []
    seen = {(pid, round(created, 2)) for pid, created in result.get("final_processes", [])}
    seen |= {(r["pid"], round(r["create_time"], 2))
             for r in result.get("memory", {}).get("detail", []) if r["role"] != "driver"}
    alive = _alive(seen)
    if alive:
        _, alive = psutil.wait_procs(alive, timeout=10)
    for process in alive:
        leaks.append(f"process {process.pid} ({process.name()}) outlived the run; killed it")
        process.kill()
    pid = result.get("env", {}).get("pid")
    for segment in Path("/dev/shm").glob(f"distkernel-{pid}-*") if pid else []:
        leaks.append(f"shared-memory segment {segment.name} outlived the run; removed it")
        segment.unlink(missing_ok=True)
    return leaks


def _alive(seen: set[tuple[int, float]]) -> list[Any]:
    """The processes of ``seen`` still running (same pid *and* start time: not a reused pid)."""
    alive = []
    for pid, created in seen:
        try:
            process = psutil.Process(pid)
            if round(process.create_time(), 2) == created and process.is_running():
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def shown_command(argv: list[str]) -> str:
    """The command as typed from the project root, for the report."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) \
        else sys.executable
    script = os.path.relpath(__file__) if __file__.startswith(os.getcwd()) else __file__
    return shlex.join([python, script, *argv])


def environment_line(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    versions = [f"{report.NAMES[e]} {r['env']['engine_version']}"
                for e, r in results.items() if "env" in r]
    env = next((r["env"] for r in results.values() if "env" in r), {})
    mode = "quick" if args.quick else "full"
    return (f"{mode} run, {args.workers} workers, {env.get('cpus', '?')} CPUs, "
            f"Python {env.get('python', '?')}, numpy {env.get('numpy', '?')}, "
            + ", ".join(versions))


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, argv: list[str],
           elapsed: float) -> str:
    lines = [report.table(results, args.engine_list), "", report.LEGEND, "",
             environment_line(results, args) + ".", ""]
    notes = report.notes(results, args.engine_list)
    if notes:
        lines += ["Notes:", *(f"- {note}" for note in notes), ""]
    lines += [f"Command: `{shown_command(argv)}`",
              f"Total time: {elapsed:.0f} s (" + ", ".join(
                  f"{report.NAMES[e]} {r['wall_s']:.0f} s"
                  for e, r in results.items() if "wall_s" in r) + ")"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.paired_ray:
        return paired(args, argv, t0)
    results: dict[str, dict[str, Any]] = {}
    for engine in args.engine_list:
        print(f"running {report.NAMES[engine]} ...", file=sys.stderr, flush=True)
        results[engine] = run_engine(engine, args)
        if "log_tail" in results[engine]:
            print(results[engine]["log_tail"], file=sys.stderr)
    elapsed = time.perf_counter() - t0
    print(render(results, args, argv, elapsed))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": shown_command(argv), "elapsed_s": elapsed, "results": results},
            indent=1, default=str))
    failed = any("fatal" in r for r in results.values())
    return 1 if failed else 0


def paired(args: argparse.Namespace, argv: list[str], t0: float) -> int:
    """``--paired-ray``: one child runs distkernel on Ray and plain Ray in turns."""
    print("running distkernel on Ray and plain Ray, paired ...", file=sys.stderr, flush=True)
    result = run_engine("distkernel-ray", args)
    if "log_tail" in result:
        print(result["log_tail"], file=sys.stderr)
    env = result.get("env", {})
    mode = "quick" if args.quick else "full"
    lines = [report.paired_table(result), "", report.PAIRED_LEGEND, "",
             f"{mode} run, {len(result.get('rounds', []))} rounds, {args.workers} workers, "
             f"{env.get('cpus', '?')} CPUs, Python {env.get('python', '?')}, "
             f"Ray {env.get('ray_version', '?')}.", ""]
    notes = report.paired_notes(result)
    if notes:
        lines += ["Notes:", *(f"- {note}" for note in notes), ""]
    lines += [f"Command: `{shown_command(argv)}`",
              f"Total time: {time.perf_counter() - t0:.0f} s"]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": shown_command(argv), "result": result}, indent=1, default=str))
    return 1 if "fatal" in result or result.get("returncode") else 0


if __name__ == "__main__":
    sys.exit(main())
