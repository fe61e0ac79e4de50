"""Inline timings under a cell: a summary line, a per-task table and a task-stream chart.

Pure rendering (SPEC §6): ``TaskRecord`` lists in, Jupyter mime bundles out. No IPython and no
engine imports, so the magics, the kernel and ``%dist timeline`` share it and tests need no
cluster.

Notebook outputs are shown in JupyterLab (light and dark themes), in exported HTML and through
sanitizers that drop scripts, so the HTML is one self-contained ``<div>`` with a scoped
``<style>``: colors come from JupyterLab's CSS variables with light-theme fallbacks, presentation
attributes keep the chart legible where the ``<style>`` is stripped, and there is no script.
Every user string goes through ``html.escape`` (task names like ``<lambda>``).
"""

from __future__ import annotations

import html
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from distkernel.timings import TaskRecord

MAX_ROWS = 50
"""Rows shown in the full-mode table before a "… N more" row: a cell output is not a log."""

MODES = ("summary", "full")
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#9c755f", "#a0cbe8")
"""Mid-saturation colors that read on white and on JupyterLab's dark background; no red or grey,
which mean failed and cancelled."""
FAILED_COLOR = "#e15759"
CANCELLED_COLOR = "#9e9e9e"
DASH = "\u2014"  # shown for "no value": an em dash reads as absent, "0" or "-" would not
ELLIPSIS = "\u2026"
SEP = " \u00b7 "  # middle dot between summary parts

LANE_HEIGHT, BAR_HEIGHT, AXIS_HEIGHT, MIN_BAR = 20, 12, 22, 2.0

_Scale = Callable[[float], float]  # time (epoch seconds) to x pixels
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")

_CSS = """
.jp-Distkernel-timings { font-family: var(--jp-ui-font-family, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color1, #333); }
.jp-Distkernel-title { font-weight: 600; margin-bottom: 2px; }
.jp-Distkernel-summary { margin: 2px 0 4px 0; }
.jp-Distkernel-timings svg { display: block; max-width: 100%; height: auto; }
.jp-Distkernel-timings svg text { fill: var(--jp-ui-font-color1, #333); font-size: 11px; }
.jp-Distkernel-timings svg .jp-Distkernel-tick { fill: var(--jp-ui-font-color2, #666); }
.jp-Distkernel-axis { stroke: var(--jp-ui-font-color2, #666); }
.jp-Distkernel-grid { stroke: var(--jp-border-color2, #ddd); }
.jp-Distkernel-queue, .jp-Distkernel-pending { fill: var(--jp-ui-font-color3, #999); }
.jp-Distkernel-table { border-collapse: collapse; margin-top: 6px; font-size: 12px; }
.jp-Distkernel-table th, .jp-Distkernel-table td { padding: 1px 8px; text-align: left;
  border-bottom: 1px solid var(--jp-border-color2, #e0e0e0); white-space: nowrap; }
.jp-Distkernel-table .jp-Distkernel-num { text-align: right; font-variant-numeric: tabular-nums; }
.jp-Distkernel-status-failed { color: var(--jp-error-color1, #d32f2f); }
.jp-Distkernel-status-cancelled, .jp-Distkernel-more { color: var(--jp-ui-font-color2, #777); }
"""


# ---------------------------------------------------------------- numbers


def format_duration(seconds: float | None) -> str:
    """A duration at three significant digits in the unit that keeps it short ('—' if unknown)."""
    if seconds is None:
        return DASH
    # Clamped: records from several processes can disagree by a few µs.
    rounded = float(f"{max(seconds, 0.0):.3g}")
    if rounded == 0:
        return "0 s"
    if rounded < 1e-3:
        return f"{rounded * 1e6:.3g} \u00b5s"
    if rounded < 1:
        return f"{rounded * 1e3:.3g} ms"
    if rounded < 60:
        return f"{rounded:.3g} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def format_bytes(n: int) -> str:
    """A byte count in binary units with one decimal ('0 B', '1.5 KiB', '2.0 MiB')."""
    if n < 0:
        msg = f"a byte count must be >= 0, got {n!r}"
        raise ValueError(msg)
    if n < 1024:
        return f"{n} B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, power = float(n), 0
    while round(value, 1) >= 1024 and power < len(units) - 1:
        value, power = value / 1024, power + 1
    return f"{value:.1f} {units[power]}"


# ---------------------------------------------------------------- strings


def _clean(text: str, limit: int | None = None) -> str:
    """One line without ANSI codes or control characters, cut to ``limit`` with '…'."""
    text = " ".join(_CONTROL.sub("", text).split())
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + ELLIPSIS
    return text


def _short_error(error: str | None, limit: int = 80) -> str:
    """The last non-empty line of a traceback is the exception itself: that is what to show."""
    if not error:
        return ""
    lines = [line for line in _CONTROL.sub("", error).splitlines() if line.strip()]
    return _clean(lines[-1] if lines else error, limit)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _lane_label(worker_id: int | None, lane_names: Mapping[int, str] | None) -> str:
    if worker_id is None:
        return "queued"
    if lane_names and worker_id in lane_names:
        return _clean(str(lane_names[worker_id]))
    return f"worker {worker_id}"


# ---------------------------------------------------------------- summary


def _horizon(records: Sequence[TaskRecord]) -> float:
    """The latest time any record mentions: where running bars end and the wall clock stops."""
    return max(t for r in records for t in (r.submitted, r.started, r.finished) if t is not None)


def _name_groups(records: Sequence[TaskRecord], shown: int = 3) -> str:
    """' (10 f, 2 g)': what the tasks were, when that fits in a few words."""
    counts = Counter(_clean(r.name, 40) for r in records)
    if len(counts) == 1:
        return f" ({next(iter(counts))})"
    top = counts.most_common(shown)
    if len(counts) > shown and top[0][1] == 1:
        return ""  # all different: a list of names would be the table, not a summary
    parts = [f"{count} {name}" for name, count in top]
    others = len(records) - sum(count for _, count in top)
    if others:
        parts.append(f"{others} others")
    return f" ({', '.join(parts)})"


def _summary_line(records: Sequence[TaskRecord]) -> str:
    """'12 tasks (12 f) on 2 workers · wall 1.24 s · run 2.30 s (max 310 ms) · …'."""
    head = f"{_plural(len(records), 'task')}{_name_groups(records)}"
    workers = {r.worker_id for r in records if r.worker_id is not None}
    if workers:
        head += f" on {_plural(len(workers), 'worker')}"
    parts = [head, f"wall {format_duration(_horizon(records) - min(r.submitted for r in records))}"]
    runs = [r.run_time for r in records if r.run_time is not None]
    if runs:
        parts.append(f"run {format_duration(sum(runs))} (max {format_duration(max(runs))})")
    queues = [r.queue_time for r in records if r.queue_time is not None]
    if queues:
        parts.append(f"queue max {format_duration(max(queues))}")
    parts.append(f"in {format_bytes(sum(r.bytes_in for r in records))}")
    parts.append(f"out {format_bytes(sum(r.bytes_out for r in records))}")
    statuses = Counter(r.status for r in records)
    parts += [f"{statuses[s]} {s}" for s in ("failed", "cancelled", "running", "pending")
              if statuses[s]]
    return SEP.join(parts)


def _lane_lines(records: Sequence[TaskRecord], lane_names: Mapping[int, str] | None) -> list[str]:
    """The text rendition of the chart: per lane, how many tasks and how long it was busy."""
    lines = []
    for worker_id in _lanes(records):
        mine = [r for r in records if r.worker_id == worker_id]
        if worker_id is None:
            lines.append(f"  queued: {len(mine)} not started")
            continue
        busy = sum(r.run_time or 0.0 for r in mine)
        label = _lane_label(worker_id, lane_names)
        lines.append(f"  {label}: {_plural(len(mine), 'task')}, busy {format_duration(busy)}")
    return lines


# ---------------------------------------------------------------- chart


def _lanes(records: Sequence[TaskRecord]) -> list[int | None]:
    """Workers in id order, then the 'queued' lane for records not placed yet."""
    ids = sorted({r.worker_id for r in records if r.worker_id is not None})
    return [*ids, None] if any(r.worker_id is None for r in records) else list(ids)


def _color(record: TaskRecord) -> str:
    if record.status == "failed":
        return FAILED_COLOR
    if record.status == "cancelled":
        return CANCELLED_COLOR
    # crc32, not hash(): str hashes change between processes and outputs must be deterministic.
    return PALETTE[zlib.crc32(record.name.encode("utf-8", "replace")) % len(PALETTE)]


def _ticks(span: float) -> list[float]:
    """3 to 6 evenly spaced ticks on a 1-2-5 step from 0 to ``span``."""
    exponent = math.floor(math.log10(span)) - 1
    while True:
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            count = math.floor(span / step + 1e-9) + 1
            if count <= 6:
                return [i * step for i in range(count)]
        exponent += 1


def _tooltip(record: TaskRecord, lane: str, horizon: float) -> str:
    run = format_duration(record.run_time)
    if record.started is not None and record.finished is None:
        run = f"{format_duration(horizon - record.started)} so far"
    lines = [
        _clean(record.name),
        f"{lane}{SEP}{record.status}",
        f"queue {format_duration(record.queue_time)}{SEP}run {run}",
        f"in {format_bytes(record.bytes_in)}{SEP}out {format_bytes(record.bytes_out)}",
    ]
    if record.error:
        lines.append(_short_error(record.error, 200))
    return "\n".join(lines)


def _svg_queue(record: TaskRecord, y: float, x: _Scale) -> str | None:
    """A faint segment from submitted to started; drawn under every bar, so it shows in gaps."""
    if record.started is None or record.started <= record.submitted:
        return None
    q0, q1 = x(record.submitted), x(record.started)
    return (f'<rect class="jp-Distkernel-queue" x="{q0:.1f}" y="{y + LANE_HEIGHT / 2 - 2:.1f}" '
            f'width="{q1 - q0:.1f}" height="4" fill="#999" opacity="0.45"/>')


def _svg_bar(record: TaskRecord, lane: str, y: float, x: _Scale, horizon: float) -> str:
    """The bar of one task (a thin marker if it has not started), with its tooltip."""
    title = f"<title>{html.escape(_tooltip(record, lane, horizon))}</title>"
    mid = y + LANE_HEIGHT / 2
    if record.started is None:
        x0 = x(record.submitted)
        width = max(x(horizon) - x0, MIN_BAR)
        return (f'<rect class="jp-Distkernel-pending" x="{x0:.1f}" y="{mid - 1:.1f}" '
                f'width="{width:.1f}" height="2" fill="#999" opacity="0.6">{title}</rect>')
    end = horizon if record.finished is None else record.finished
    b0 = x(record.started)
    # 1 px shorter so back-to-back tasks of one name stay two bars, not one.
    width = max(x(end) - b0 - 1, MIN_BAR)
    color = _color(record)
    # An open bar (still running) is lighter with a dashed outline: it will grow.
    style = (
        f' fill-opacity="0.45" stroke="{color}" stroke-dasharray="3 2"'
        if record.finished is None
        else ""
    )
    return (f'<rect class="jp-Distkernel-bar jp-Distkernel-{record.status}" x="{b0:.1f}" '
            f'y="{mid - BAR_HEIGHT / 2:.1f}" width="{width:.1f}" height="{BAR_HEIGHT}" rx="2" '
            f'fill="{color}"{style}>{title}</rect>')


def _svg_lane(label: str, y: int, left: int, right: int) -> list[str]:
    """A lane's label (cut to fit, whole in its tooltip) and the faint line under it."""
    bottom = y + LANE_HEIGHT
    return [
        f'<line class="jp-Distkernel-grid" x1="{left}" y1="{bottom}" x2="{right}" '
        f'y2="{bottom}" stroke="#ddd" stroke-width="0.5"/>',
        f'<text class="jp-Distkernel-lane" x="{left - 6}" y="{y + 14}" text-anchor="end" '
        f'fill="#888"><title>{html.escape(label)}</title>{html.escape(_clean(label, 24))}</text>',
    ]


def _svg_axis(t0: float, span: float, x: _Scale, top: int, left: int, right: int) -> list[str]:
    out = [f'<line class="jp-Distkernel-axis" x1="{left}" y1="{top}" x2="{right}" y2="{top}" '
           'stroke="#888"/>']
    for tick in _ticks(span):
        tx = x(t0 + tick)
        out.append(f'<line class="jp-Distkernel-axis" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" '
                   f'y2="{top + 4}" stroke="#888"/>')
        out.append(f'<text class="jp-Distkernel-tick" x="{tx:.1f}" y="{top + 15}" '
                   f'text-anchor="middle" fill="#888">{html.escape(format_duration(tick))}</text>')
    return out


def task_stream_svg(
    records: Sequence[TaskRecord],
    *,
    width: int = 640,
    lane_names: Mapping[int, str] | None = None,
) -> str:
    """A task-stream (Gantt) chart: one lane per worker, one bar per task, queue time before it."""
    if width < 200:
        msg = f"the chart needs width >= 200 pixels to fit labels and bars, got {width!r}"
        raise ValueError(msg)
    if not records:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="24">'
                '<text x="4" y="16" fill="#888">no tasks</text></svg>')
    lanes = _lanes(records)
    labels = {lane: _lane_label(lane, lane_names) for lane in lanes}
    left = min(12 + 7 * max(len(_clean(label, 24)) for label in labels.values()), width // 3)
    right = width - 24  # room for the last tick label
    t0, horizon = min(r.submitted for r in records), _horizon(records)
    span = max(horizon - t0, 1e-6)

    def x(t: float) -> float:
        return left + (t - t0) / span * (right - left)

    plot_bottom = len(lanes) * LANE_HEIGHT
    height = plot_bottom + AXIS_HEIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" font-size="11">']
    queues, bars = [], []
    for i, lane in enumerate(lanes):
        y, label = i * LANE_HEIGHT, labels[lane]
        out += _svg_lane(label, y, left, right)
        for record in (r for r in records if r.worker_id == lane):
            queues.append(_svg_queue(record, y, x))
            bars.append(_svg_bar(record, label, y, x, horizon))
    out += [q for q in queues if q] + bars
    out += _svg_axis(t0, span, x, plot_bottom, left, right)
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------- table

_COLUMNS = ("name", "where", "status", "queue", "run", "in", "out", "error")
_NUMERIC = {"queue", "run", "in", "out"}


def _row(record: TaskRecord, lane_names: Mapping[int, str] | None) -> dict[str, str]:
    return {
        "name": _clean(record.name, 60),
        "where": DASH if record.worker_id is None else _lane_label(record.worker_id, lane_names),
        "status": record.status,
        "queue": format_duration(record.queue_time),
        "run": format_duration(record.run_time),
        "in": format_bytes(record.bytes_in),
        "out": format_bytes(record.bytes_out),
        "error": _short_error(record.error),
    }


def _html_table(records: Sequence[TaskRecord], lane_names: Mapping[int, str] | None) -> str:
    head = "".join(
        f'<th class="jp-Distkernel-num">{c}</th>' if c in _NUMERIC else f"<th>{c}</th>"
        for c in _COLUMNS
    )
    rows = []
    for record in records[:MAX_ROWS]:
        row = _row(record, lane_names)
        cells = []
        for column in _COLUMNS:
            cls = "jp-Distkernel-num" if column in _NUMERIC else ""
            if column == "status":
                cls = f"jp-Distkernel-status-{record.status}"
            attrs = f' class="{cls}"' if cls else ""
            if column == "error" and record.error:
                attrs += f' title="{html.escape(_clean(record.error, 2000))}"'
            cells.append(f"<td{attrs}>{html.escape(row[column])}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if len(records) > MAX_ROWS:
        rows.append(f'<tr class="jp-Distkernel-more"><td colspan="{len(_COLUMNS)}">'
                    f"{ELLIPSIS} {len(records) - MAX_ROWS} more</td></tr>")
    return (f'<table class="jp-Distkernel-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _text_table(records: Sequence[TaskRecord], lane_names: Mapping[int, str] | None) -> str:
    rows = [{c: c for c in _COLUMNS}]
    rows += [_row(r, lane_names) for r in records[:MAX_ROWS]]
    for row in rows:
        row["name"], row["where"] = _clean(row["name"], 30), _clean(row["where"], 20)
    widths = {c: max(len(row[c]) for row in rows) for c in _COLUMNS}
    lines = [
        "  ".join(
            row[c].rjust(widths[c]) if c in _NUMERIC else row[c].ljust(widths[c])
            for c in _COLUMNS
        ).rstrip()
        for row in rows
    ]
    if len(records) > MAX_ROWS:
        lines.append(f"{ELLIPSIS} {len(records) - MAX_ROWS} more")
    return "\n".join(lines)


# ---------------------------------------------------------------- bundles


def _html(parts: list[str], title: str | None) -> str:
    head = f'<div class="jp-Distkernel-title">{html.escape(_clean(title))}</div>' if title else ""
    return (f'<div class="jp-Distkernel-timings"><style>{_CSS}</style>{head}'
            f"{''.join(parts)}</div>")


def _text(lines: list[str], title: str | None) -> str:
    return "\n".join([_clean(title), *lines] if title else lines)


def _empty_bundle(title: str | None) -> dict[str, str]:
    return {
        "text/html": _html(['<div class="jp-Distkernel-empty">no tasks</div>'], title),
        "text/plain": _text(["no tasks"], title),
    }


def timings_bundle(
    records: Sequence[TaskRecord],
    *,
    mode: Literal["summary", "full"] = "summary",
    title: str | None = None,
    lane_names: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """A Jupyter mime bundle {'text/html': ..., 'text/plain': ...} for the tasks of one cell.

    ``summary`` is one line and the chart, small enough to show under every cell; ``full`` adds a
    row per task for when one task is slow or failed and the user wants to know which.
    """
    if mode not in MODES:
        msg = f"unknown timings mode {mode!r}; expected one of {', '.join(MODES)}"
        raise ValueError(msg)
    if not records:
        return _empty_bundle(title)
    summary = _summary_line(records)
    html_parts = [f'<div class="jp-Distkernel-summary">{html.escape(summary)}</div>',
                  task_stream_svg(records, lane_names=lane_names)]
    text_lines = [summary, *_lane_lines(records, lane_names)]
    if mode == "full":
        html_parts.append(_html_table(records, lane_names))
        text_lines += ["", _text_table(records, lane_names)]
    return {"text/html": _html(html_parts, title), "text/plain": _text(text_lines, title)}


def timeline_bundle(
    records: Sequence[TaskRecord],
    *,
    title: str | None = None,
    lane_names: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """Just the task-stream chart (for ``%dist timeline --last N``), with a short text fallback."""
    if not records:
        return _empty_bundle(title)
    text_lines = [_summary_line(records), *_lane_lines(records, lane_names)]
    return {
        "text/html": _html([task_stream_svg(records, lane_names=lane_names)], title),
        "text/plain": _text(text_lines, title),
    }
