"""Inline timings under a cell: a summary line, a per-task table and a task-stream chart.

Pure rendering (SPEC §6): ``TaskRecord`` lists (and a cluster snapshot, for lane names) in,
Jupyter mime bundles out. No IPython and no engine imports, so the magics, the kernel and
``%dist timeline`` share it and tests need no cluster.

Notebook outputs are shown in JupyterLab (light and dark themes, trusted or not), in exported
HTML and through sanitizers that drop scripts, ``<style>`` and ``<svg>``. So the HTML is one
``<div>`` of plain elements styled inline with what JupyterLab's sanitizer keeps (see the chart
section), with no script, and text inherits the theme's color. Every user string goes through
``html.escape`` (task names like ``<lambda>``).
"""

from __future__ import annotations

import html
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from distkernel.backends.snapshot import ClusterSnapshot
from distkernel.core.config import format_bytes
from distkernel.core.timings import TaskRecord

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

LANE_HEIGHT, BAR_HEIGHT, AXIS_HEIGHT, MIN_BAR = 18, 12, 18, 2
GUTTER, RIGHT_ROOM = 8, 44  # px between labels and bars; room for the last tick's label
# Grey with alpha reads as faint on white and on JupyterLab's dark background alike.
GRID, FAINT, MUTED, AXIS = "#80808066", "#80808073", "#808080a6", "#808080"
STARTING = "#80808026"  # a worker still starting: the faintest grey, in a dashed box
TEXT_SMALL = "font-size:11px;opacity:0.7"  # muted text: the theme's color, faded
#: Lane labels and the legend: the theme's own text color at full strength, readable in the
#: light and the dark theme.
TEXT_LABEL = "font-size:12px"
#: The legend names at most this many functions (the most frequent), then "N others".
LEGEND_MAX = 8
CELL = f"padding:1px 8px;white-space:nowrap;border-bottom:1px solid {GRID}"

_Scale = Callable[[float], float]  # time (epoch seconds) to percent of the time axis
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


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


def _start_wait(records: Sequence[TaskRecord],
                ready_at: Mapping[int, float] | None) -> dict[int, float]:
    """Per lane, how long after the first submission its worker became ready (only the
    lanes whose worker was still starting then)."""
    if not ready_at:
        return {}
    t0 = min(r.submitted for r in records)
    lanes = {r.worker_id for r in records if r.worker_id is not None}
    return {lane: ready_at[lane] - t0 for lane in lanes
            if lane in ready_at and ready_at[lane] > t0}


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


def _summary_line(records: Sequence[TaskRecord],
                  ready_at: Mapping[int, float] | None = None) -> str:
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
    waited = _start_wait(records, ready_at)
    if waited:
        parts.append(f"{format_duration(max(waited.values()))} of it workers starting")
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
#
# Why plain positioned <div>s: JupyterLab sanitizes outputs it does not trust (a notebook run by
# nbclient, a shared one). Its sanitizer (apputils/src/sanitizer.ts) drops <svg> and <style> but
# keeps their text, and keeps inline `style` declarations whose values match its allow-list:
# hex or rgba colors but no var() or calc(), lengths and percentages for left / width. So every
# element is styled inline within that subset, colors are fixed hex that read on white and on
# the dark theme, and text inherits the theme's color (muted with opacity, never a fixed color).


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


def _attr(text: str) -> str:
    """An attribute value; newlines as ``&#10;`` so tooltips keep their lines (XML would not)."""
    return html.escape(text, quote=True).replace("\n", "&#10;")


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


def _span_style(x0: float, x1: float, top: float, height: float) -> str:
    """Where a segment sits in its lane: left and width in % of the time axis, so it scales."""
    return (f"position:absolute;left:{x0:.2f}%;width:{max(x1 - x0, 0.0):.2f}%;"
            f"min-width:{MIN_BAR}px;top:{top:g}px;height:{height:g}px")


def _queue_div(record: TaskRecord, x: _Scale) -> str | None:
    """A faint segment from submitted to started, drawn before (under) the lane's bars."""
    if record.started is None or record.started <= record.submitted:
        return None
    style = _span_style(x(record.submitted), x(record.started), LANE_HEIGHT / 2 - 2, 4)
    return f'<div class="jp-Distkernel-queue" style="{style};background-color:{FAINT}"></div>'


def _bar_div(record: TaskRecord, lane: str, x: _Scale, horizon: float) -> str:
    """The bar of one task (a thin marker if it has not started), with its tooltip."""
    title = _attr(_tooltip(record, lane, horizon))
    if record.started is None:
        style = _span_style(x(record.submitted), x(horizon), LANE_HEIGHT / 2 - 1, 2)
        return (f'<div class="jp-Distkernel-pending" title="{title}" '
                f'style="{style};background-color:{MUTED}"></div>')
    end = horizon if record.finished is None else record.finished
    top = (LANE_HEIGHT - BAR_HEIGHT) / 2
    style = _span_style(x(record.started), x(end), top, BAR_HEIGHT) + ";box-sizing:border-box"
    color = _color(record)
    if record.finished is None:  # still running: lighter with a dashed outline, it will grow
        style += f";background-color:{color}73;border:1px dashed {color}"
    else:  # a transparent right edge keeps back-to-back tasks of one name two bars, not one
        style += (f";background-color:{color};border-right:1px solid transparent;"
                  "background-clip:padding-box;border-radius:2px")
    return (f'<div class="jp-Distkernel-bar jp-Distkernel-{record.status}" title="{title}" '
            f'style="{style}"></div>')


def _starting_div(x0: float, x1: float) -> str:
    """Where a lane's worker was still starting: a dashed box, under the lane's bars."""
    style = _span_style(x0, x1, 2, LANE_HEIGHT - 4) + ";box-sizing:border-box"
    return (f'<div class="jp-Distkernel-starting" title="worker starting (its Python and '
            f'imports)" style="{style};background-color:{STARTING};'
            f'border:1px dashed {AXIS}"></div>')


def _track(label_width: int) -> str:
    """Where the time axis sits: right of the labels, with room for the last tick's label."""
    return f"position:absolute;left:{label_width + GUTTER}px;right:{RIGHT_ROOM}px;top:0"


def _lane_div(label: str, items: list[str], label_width: int) -> str:
    """One lane: its label (cut to fit, whole in its tooltip) and a track holding its bars."""
    label_style = (f"position:absolute;left:0;top:0;width:{label_width}px;height:{LANE_HEIGHT}px;"
                   f"line-height:{LANE_HEIGHT}px;{TEXT_LABEL};text-align:right;white-space:nowrap;"
                   "overflow:hidden;text-overflow:ellipsis")
    track_style = f"{_track(label_width)};height:{LANE_HEIGHT}px;border-bottom:1px solid {GRID}"
    return (f'<div class="jp-Distkernel-lane" style="position:relative;height:{LANE_HEIGHT}px">'
            f'<div class="jp-Distkernel-label" title="{_attr(label)}" style="{label_style}">'
            f"{html.escape(_clean(label, 24))}</div>"
            f'<div class="jp-Distkernel-track" style="{track_style}">{"".join(items)}</div></div>')


def _grid_div(ticks: list[float], x: _Scale, t0: float, label_width: int) -> str:
    """Faint vertical lines at the ticks, behind every lane (first in the markup)."""
    lines = "".join(
        f'<div style="position:absolute;left:{x(t0 + tick):.2f}%;top:0;width:0;height:100%;'
        f'border-left:1px solid {GRID}"></div>'
        for tick in ticks
    )
    style = f"{_track(label_width)};bottom:{AXIS_HEIGHT}px"
    return f'<div class="jp-Distkernel-grid" style="{style}">{lines}</div>'


def _axis_div(ticks: list[float], x: _Scale, t0: float, label_width: int) -> str:
    """Tick labels left-aligned on their tick mark: no centering, which would need transform."""
    labels = "".join(
        f'<div class="jp-Distkernel-tick" style="position:absolute;left:{x(t0 + tick):.2f}%;'
        f"top:0;height:{AXIS_HEIGHT - 4}px;padding:2px 0 0 3px;border-left:1px solid {AXIS};"
        f'{TEXT_SMALL};white-space:nowrap">{html.escape(format_duration(tick))}</div>'
        for tick in ticks
    )
    style = f"{_track(label_width)};height:{AXIS_HEIGHT}px;border-top:1px solid {AXIS}"
    return (f'<div style="position:relative;height:{AXIS_HEIGHT}px">'
            f'<div class="jp-Distkernel-axis" style="{style}">{labels}</div></div>')


def task_stream_html(
    records: Sequence[TaskRecord],
    *,
    width: int = 760,
    lane_names: Mapping[int, str] | None = None,
    ready_at: Mapping[int, float] | None = None,
) -> str:
    """A task-stream (Gantt) chart: one lane per worker, one bar per task, queue time before it;
    ``ready_at`` (worker id -> when it was ready) marks the time its worker was starting.

    ``width`` is the most pixels it takes; it shrinks with the output area, bars being placed in
    percent of the time axis.
    """
    if width < 200:
        msg = f"the chart needs width >= 200 pixels to fit labels and bars, got {width!r}"
        raise ValueError(msg)
    if not records:
        return f'<div class="jp-Distkernel-stream" style="{TEXT_SMALL}">no tasks</div>'
    lanes = _lanes(records)
    labels = {lane: _lane_label(lane, lane_names) for lane in lanes}
    longest = max(len(_clean(label, 24)) for label in labels.values())
    label_width = min(max(7 * longest, 40), width // 3)
    t0, horizon = min(r.submitted for r in records), _horizon(records)
    span = max(horizon - t0, 1e-6)

    def x(t: float) -> float:
        return (t - t0) / span * 100.0

    ticks = _ticks(span)
    waits = _start_wait(records, ready_at)
    out = [_grid_div(ticks, x, t0, label_width)]
    for lane in lanes:
        mine = [r for r in records if r.worker_id == lane]
        starting = [_starting_div(0.0, x(min(t0 + waits[lane], horizon)))] \
            if lane in waits else []
        queues = [q for q in (_queue_div(r, x) for r in mine) if q]
        bars = [_bar_div(r, labels[lane], x, horizon) for r in mine]
        out.append(_lane_div(labels[lane], starting + queues + bars, label_width))
    out.append(_axis_div(ticks, x, t0, label_width))
    out.append(_legend_div(records, starting=bool(waits)))
    style = f"position:relative;max-width:{width}px;margin:2px 0 0 0"
    return f'<div class="jp-Distkernel-stream" style="{style}">{"".join(out)}</div>'


def _swatch(color: str, text: str, *, faint: bool = False, dashed: bool = False) -> str:
    border = f";border:1px dashed {AXIS};box-sizing:border-box" if dashed else ""
    box = (f"display:inline-block;width:10px;height:10px;margin:0 4px 0 0;"
           f"background-color:{color};border-radius:2px;vertical-align:middle{border}")
    opacity = ";opacity:0.7" if faint else ""
    return (f'<div class="jp-Distkernel-legendItem" style="display:inline-block;'
            f'margin:0 12px 0 0;white-space:nowrap{opacity}"><div style="{box}"></div>'
            f"{html.escape(text)}</div>")


def _legend_div(records: Sequence[TaskRecord], *, starting: bool = False) -> str:
    """What the colors mean: one swatch per function (the most frequent first), the queue
    segment, and failed / cancelled when there are such tasks."""
    names = Counter(r.name for r in records if r.status not in ("failed", "cancelled"))
    items = [_swatch(PALETTE[zlib.crc32(name.encode("utf-8", "replace")) % len(PALETTE)],
                     _clean(name, 30))
             for name, _ in names.most_common(LEGEND_MAX)]
    if len(names) > LEGEND_MAX:
        items.append(f'<div style="display:inline-block;{TEXT_SMALL}">'
                     f"{len(names) - LEGEND_MAX} others</div>")
    statuses = {r.status for r in records}
    if "failed" in statuses:
        items.append(_swatch(FAILED_COLOR, "failed"))
    if "cancelled" in statuses:
        items.append(_swatch(CANCELLED_COLOR, "cancelled"))
    if any(r.started is not None and r.started > r.submitted for r in records):
        items.append(_swatch(FAINT, "waiting in the queue (darker where waits overlap)",
                             faint=True))
    if starting:
        items.append(_swatch(STARTING, "worker starting", faint=True, dashed=True))
    return (f'<div class="jp-Distkernel-legend" style="margin:4px 0 0 0;{TEXT_LABEL}">'
            f'{"".join(items)}</div>')


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


def _cell_style(column: str, status: str = "") -> str:
    """Inline, not a stylesheet: JupyterLab's own table rules (right-aligned, padded) apply."""
    style = f"{CELL};text-align:{'right' if column in _NUMERIC else 'left'}"
    if column == "status" and status == "failed":
        style += f";color:{FAILED_COLOR}"
    elif column == "status" and status == "cancelled":
        style += ";opacity:0.7"
    return style


def _html_table(records: Sequence[TaskRecord], lane_names: Mapping[int, str] | None) -> str:
    head = "".join(f'<th style="{_cell_style(c)}">{c}</th>' for c in _COLUMNS)
    rows = []
    for record in records[:MAX_ROWS]:
        row = _row(record, lane_names)
        cells = []
        for column in _COLUMNS:
            attrs = f' style="{_cell_style(column, record.status)}"'
            if column == "status":
                attrs = f' class="jp-Distkernel-status-{record.status}"{attrs}'
            if column == "error" and record.error:
                attrs += f' title="{_attr(_clean(record.error, 2000))}"'
            cells.append(f"<td{attrs}>{html.escape(row[column])}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if len(records) > MAX_ROWS:
        rows.append(f'<tr class="jp-Distkernel-more"><td colspan="{len(_COLUMNS)}" '
                    f'style="{CELL};text-align:left;opacity:0.7">'
                    f"{ELLIPSIS} {len(records) - MAX_ROWS} more</td></tr>")
    style = "border-collapse:collapse;margin:6px 0 0 0;font-size:12px"
    return (f'<table class="jp-Distkernel-table" style="{style}"><thead><tr>{head}</tr></thead>'
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
    head = (f'<div class="jp-Distkernel-title" style="font-weight:600;margin:0 0 2px 0">'
            f"{html.escape(_clean(title))}</div>" if title else "")
    return (f'<div class="jp-Distkernel-timings" style="font-size:13px">{head}'
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
    ready_at: Mapping[int, float] | None = None,
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
    summary = _summary_line(records, ready_at)
    html_parts = [f'<div class="jp-Distkernel-summary" style="margin:2px 0 4px 0">'
                  f"{html.escape(summary)}</div>",
                  task_stream_html(records, lane_names=lane_names, ready_at=ready_at)]
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
        "text/html": _html([task_stream_html(records, lane_names=lane_names)], title),
        "text/plain": _text(text_lines, title),
    }


def ready_times(snapshot: ClusterSnapshot) -> dict[int, float]:
    """When each worker became ready: the charts mark the wait for workers starting."""
    return {w.worker_id: w.ready_at for w in snapshot.workers if w.ready_at is not None}


def lane_names(snapshot: ClusterSnapshot) -> dict[int, str]:
    """Chart lanes of actor workers are named after their actor's class."""
    classes = {actor.actor_id: actor.class_name for actor in snapshot.actors}
    return {w.worker_id: f"{classes[w.actor_id]} actor" for w in snapshot.workers
            if w.actor_id and w.actor_id in classes}
