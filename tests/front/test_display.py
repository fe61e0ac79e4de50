"""Inline timings rendering (SPEC §6): numbers, the summary line, the table and the chart.

Pure functions on synthetic ``TaskRecord`` lists: no cluster. The HTML is parsed as XML, so a
test fails on markup that is not well formed as well as on a wrong number. Every inline style is
checked against what JupyterLab's sanitizer keeps (``ALLOWED_STYLES``): the chart must survive
an untrusted notebook, where ``<svg>``, ``<style>`` and ``var()`` are stripped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from distkernel.core.timings import TaskRecord
from distkernel.front.timings_view import (
    MAX_ROWS,
    format_duration,
    task_stream_html,
    timeline_bundle,
    timings_bundle,
)

T0 = 1_700_000_000.0  # realistic epoch seconds: float precision there is part of the test

# The subset of JupyterLab's sanitizer allow-list (packages/apputils/src/sanitizer.ts) we use,
# with value patterns no looser than its own: hex / rgba / a few names for colors, never var().
_LEN = r"(0|-?\d+(\.\d+)?px)"
_LEN_PCT = rf"({_LEN}|\d+(\.\d+)?%)"
_COLOR = r"(#[0-9a-f]{3,8}|rgba?\([0-9.,\s]+\)|transparent)"
_BORDER = rf"(({_LEN}|solid|dashed|dotted|{_COLOR})\s*){{1,3}}"
ALLOWED_STYLES = {
    **dict.fromkeys(
        ("left", "right", "top", "bottom", "width", "height", "min-width", "max-width"), _LEN_PCT
    ),
    **dict.fromkeys(
        ("border", "border-left", "border-right", "border-top", "border-bottom"), _BORDER
    ),
    **dict.fromkeys(("background-color", "color"), _COLOR),
    **dict.fromkeys(("padding", "margin"), rf"({_LEN}\s*){{1,4}}"),
    "position": "static|relative|absolute",
    "display": "block|inline|inline-block|table-cell|none",
    "overflow": "hidden|visible|auto",
    "opacity": r"(0|1|0?\.\d+)",
    "border-radius": _LEN,
    "border-collapse": "collapse|separate",
    "background-clip": "border-box|padding-box|content-box",
    "box-sizing": "border-box|content-box",
    "font-size": _LEN,
    "font-weight": "normal|bold|[1-9]00",
    "line-height": _LEN,
    "white-space": "normal|nowrap|pre|pre-wrap|pre-line",
    "text-align": "left|right|center|justify",
    "text-overflow": "clip|ellipsis",
    "vertical-align": "top|middle|bottom|baseline",
    "z-index": r"\d+",
}


def rec(
    name: str = "f",
    worker: int | None = 0,
    submitted: float = 0.0,
    started: float | None = 0.001,
    finished: float | None = 0.1,
    status: str = "finished",
    bytes_in: int = 0,
    bytes_out: int = 0,
    error: str | None = None,
    kind: str = "task",
    task_id: str = "",
) -> TaskRecord:
    """A record with times given relative to T0."""
    return TaskRecord(
        task_id=task_id or f"{name}-{submitted}-{worker}",
        name=name,
        kind=kind,
        worker_id=worker,
        submitted=T0 + submitted,
        started=None if started is None else T0 + started,
        finished=None if finished is None else T0 + finished,
        status=status,  # type: ignore[arg-type]
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        error=error,
    )


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in e.get("class", "").split()]


def style(element: ET.Element) -> dict[str, str]:
    pairs = (d.split(":", 1) for d in element.get("style", "").split(";") if d.strip())
    return {k.strip(): v.strip() for k, v in pairs}


def pct(element: ET.Element, prop: str) -> float:
    value = style(element)[prop]
    assert value.endswith("%"), f"{prop} should be a percentage of the time axis, got {value}"
    return float(value[:-1])


def bars(root: ET.Element) -> list[ET.Element]:
    return by_class(root, "jp-Distkernel-bar")


def title_of(element: ET.Element) -> str:
    title = element.get("title")
    assert title
    return title


def lanes(root: ET.Element) -> dict[str, ET.Element]:
    """Lane label to the lane's track, in drawing order."""
    out = {}
    for lane in by_class(root, "jp-Distkernel-lane"):
        (label,) = by_class(lane, "jp-Distkernel-label")
        (track,) = by_class(lane, "jp-Distkernel-track")
        out[label.text] = track
    return out


def table_rows(html_text: str) -> list[ET.Element]:
    tbody = parse(html_text).find(".//table/tbody")
    assert tbody is not None
    return list(tbody)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "\u2014"),
        (0.0, "0 s"),
        (-2e-6, "0 s"),  # clock disagreement between processes, not a negative duration
        (850e-6, "850 \u00b5s"),
        (1.5e-6, "1.5 \u00b5s"),
        (0.0009996, "1 ms"),  # rounds up into the next unit, not "1e+03 µs"
        (0.004, "4 ms"),
        (0.0123, "12.3 ms"),
        (0.31, "310 ms"),
        (0.9996, "1 s"),
        (1.52, "1.52 s"),
        (59.4, "59.4 s"),
        (59.99, "1 min 0 s"),
        (125.0, "2 min 5 s"),
        (3599.6, "1 h 0 min"),
        (3725.0, "1 h 2 min"),
    ],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


# ---------------------------------------------------------------- summary


def three_tasks() -> list[TaskRecord]:
    return [
        rec("a", 0, 0.0, 0.001, 0.101, bytes_in=1024, bytes_out=10),
        rec("a", 1, 0.0, 0.004, 0.310, bytes_in=2048),
        rec("b", 0, 0.1, 0.101, 0.200, status="failed", error="ValueError: no"),
    ]


def test_summary_line_numbers():
    bundle = timings_bundle(three_tasks())
    # wall = last finished - first submitted = 310 ms; run = 100 + 306 + 99 ms; queue max = 4 ms.
    expected = (
        "3 tasks (2 a, 1 b) on 2 workers \u00b7 wall 310 ms \u00b7 run 505 ms (max 306 ms)"
        " \u00b7 queue max 4 ms \u00b7 in 3.0 KiB \u00b7 out 10 B \u00b7 1 failed"
    )
    assert bundle["text/plain"].splitlines()[0] == expected
    summary = parse(bundle["text/html"]).find(".//div[@class='jp-Distkernel-summary']")
    assert summary is not None and summary.text == expected


def test_summary_counts_every_unfinished_status_and_wall_reaches_latest_time():
    records = [
        rec("f", 0, 0.0, 0.01, 0.05),
        rec("f", 1, 0.0, 0.02, None, status="running"),
        rec("g", None, 0.3, None, None, status="pending"),
        rec("g", None, 0.1, None, None, status="cancelled"),
        rec("h", 0, 0.05, 0.06, 0.08, status="failed", error="boom"),
    ]
    line = timings_bundle(records)["text/plain"].splitlines()[0]
    assert line.startswith("5 tasks (2 f, 2 g, 1 h) on 2 workers \u00b7 wall 300 ms \u00b7 ")
    assert "run 60 ms (max 40 ms)" in line  # only finished tasks have a run time
    assert line.endswith("1 failed \u00b7 1 cancelled \u00b7 1 running \u00b7 1 pending")


def test_summary_names_one_kind_once_and_skips_a_list_of_all_different_names():
    same = timings_bundle([rec("f", 0, i, i, i + 0.5) for i in range(4)])["text/plain"]
    assert same.startswith("4 tasks (f) on 1 worker \u00b7 ")
    different = [rec(f"task_{i}", 0, i, i, i + 0.5) for i in range(5)]
    assert timings_bundle(different)["text/plain"].startswith("5 tasks on 1 worker \u00b7 ")
    many = [rec(n, 0, i, i, i + 0.5) for i, n in enumerate("aaaabbbcde")]
    assert timings_bundle(many)["text/plain"].startswith("10 tasks (4 a, 3 b, 1 c, 2 others) ")


def test_summary_mode_has_no_table_and_full_mode_has_one_row_per_task():
    records = three_tasks()
    assert "<table" not in timings_bundle(records)["text/html"]
    full = timings_bundle(records, mode="full")
    rows = table_rows(full["text/html"])
    assert len(rows) == 3
    cells = [td.text for td in rows[1]]
    assert cells == ["a", "worker 1", "finished", "4 ms", "306 ms", "2.0 KiB", "0 B", None]
    failed = rows[2]
    assert failed[2].get("class") == "jp-Distkernel-status-failed"
    assert failed[7].text == "ValueError: no"


def test_full_table_truncates_past_max_rows():
    records = [rec(f"t{i}", i % 3, i * 0.01, i * 0.01, i * 0.01 + 0.005) for i in range(60)]
    full = timings_bundle(records, mode="full")
    rows = table_rows(full["text/html"])
    assert len(rows) == MAX_ROWS + 1
    assert [td.text for td in rows[-1]] == ["\u2026 10 more"]
    assert rows[-2][0].text == f"t{MAX_ROWS - 1}"
    text = full["text/plain"]
    assert "t49" in text and "t50" not in text
    assert text.splitlines()[-1] == "\u2026 10 more"
    at_limit = timings_bundle(records[:MAX_ROWS], mode="full")
    assert len(table_rows(at_limit["text/html"])) == MAX_ROWS
    assert "more" not in at_limit["text/plain"]


def test_text_plain_full_mode_names_every_task_in_aligned_columns():
    records = [*three_tasks(), rec("Counter.incr", 2, 0.2, 0.2, 0.25, kind="actor_method")]
    text = timings_bundle(records, mode="full", lane_names={2: "Counter"})["text/plain"]
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    table = lines[header + 1 :]
    assert [line.split()[0] for line in table] == ["a", "a", "b", "Counter.incr"]
    assert "Counter" in table[3].split()[1]
    # Right-aligned numbers: the "run" column ends at the same place on every line.
    run_end = lines[header].index("run") + len("run")
    assert all(line[run_end - 2 : run_end] == "ms" for line in table)
    assert "\x1b" not in text


def test_error_is_shortened_to_its_exception_line_without_ansi_codes():
    traceback = (
        "Traceback (most recent call last):\n  File 'x.py', line 3, in f\n"
        "\x1b[31mKeyError: 'missing'\x1b[0m\n\n"
    )
    long_error = "RuntimeError: " + "x" * 300
    records = [
        rec("f", 0, status="failed", error=traceback),
        rec("g", 0, 0.2, 0.2, 0.3, status="failed", error=long_error),
    ]
    full = timings_bundle(records, mode="full")
    rows = table_rows(full["text/html"])
    assert rows[0][7].text == "KeyError: 'missing'"
    assert len(rows[1][7].text) == 80 and rows[1][7].text.endswith("\u2026")
    assert rows[1][7].get("title").startswith("RuntimeError: xxx")  # the full error on hover
    assert "KeyError: 'missing'" in full["text/plain"]
    assert "\x1b" not in full["text/plain"] and "\x1b" not in full["text/html"]


# ---------------------------------------------------------------- chart


def sample() -> list[TaskRecord]:
    return [
        rec("load", 0, 0.0, 0.002, 0.180, bytes_in=2_000_000, bytes_out=512),
        rec("load", 1, 0.0, 0.003, 0.210),
        rec("<lambda>", 0, 0.001, 0.181, 0.260),
        rec("Counter.incr", 5, 0.06, 0.061, 0.120, kind="actor_method"),
        rec("validate", 1, 0.3, 0.42, 0.47, status="failed", error="ValueError: bad"),
        rec("train", 0, 0.4, 0.456, None, status="running"),
        rec("later", None, 0.5, None, None, status="pending"),
    ]


def test_chart_is_well_formed_with_one_lane_row_per_distinct_lane():
    chart = parse(task_stream_html(sample()))
    assert "jp-Distkernel-stream" in chart.get("class").split()
    assert list(lanes(chart)) == ["worker 0", "worker 1", "worker 5", "queued"]
    assert style(chart)["max-width"] == "760px"
    labels = by_class(chart, "jp-Distkernel-label")
    assert len({style(label)["width"] for label in labels}) == 1  # one column: bars line up


def test_one_bar_per_started_task_with_a_tooltip_of_name_times_and_bytes():
    records = sample()
    chart = parse(task_stream_html(records))
    drawn = bars(chart)
    started = [r for r in records if r.started is not None]
    assert len(drawn) == len(started) == 6
    titles = [title_of(bar) for bar in drawn]
    for record in started:
        lane = f"worker {record.worker_id}"
        tooltip = next(t for t in titles if t.startswith(f"{record.name}\n{lane} "))
        assert f"queue {format_duration(record.queue_time)}" in tooltip
        assert record.status in tooltip
        if record.finished is not None:
            assert f"run {format_duration(record.run_time)}" in tooltip
    load = next(t for t in titles if t.startswith("load\nworker 0"))
    assert "in 1.9 MiB" in load and "out 512 B" in load
    assert "ValueError: bad" in next(t for t in titles if t.startswith("validate"))


def test_bars_sit_in_their_lane_and_in_time_order():
    tracks = lanes(parse(task_stream_html(sample())))
    names = {
        lane: [title_of(b).splitlines()[0] for b in bars(track)] for lane, track in tracks.items()
    }
    assert names == {
        "worker 0": ["load", "<lambda>", "train"],
        "worker 1": ["load", "validate"],
        "worker 5": ["Counter.incr"],
        "queued": [],
    }
    by_name = {title_of(b).splitlines()[0]: b for b in bars(tracks["worker 0"])}
    assert pct(by_name["<lambda>"], "left") > pct(by_name["load"], "left")
    assert pct(by_name["load"], "left") == pytest.approx(0.4)  # started 2 ms into 500 ms


def test_lambda_and_quotes_are_escaped():
    records = [rec("<lambda>", 0), rec('say "hi" & <b>bye</b>', 1, 0.1, 0.2, 0.3)]
    names = {0: "<Actor 'x'>"}
    markup = task_stream_html(records, lane_names=names)
    assert "<lambda>" not in markup and "&lt;lambda&gt;" in markup
    assert "<b>" not in markup and "<Actor" not in markup
    titles = [title_of(b).splitlines()[0] for b in bars(parse(markup))]
    assert titles == ["<lambda>", 'say "hi" & <b>bye</b>']
    assert list(lanes(parse(markup))) == ["<Actor 'x'>", "worker 1"]
    bundle = timings_bundle(records, mode="full", title="<i>cell</i>", lane_names=names)
    root = parse(bundle["text/html"])  # well formed with all of that inside
    assert [td.text for td in root.find(".//table/tbody")[0]][:2] == ["<lambda>", "<Actor 'x'>"]
    assert "<i>" not in bundle["text/html"]


def test_running_task_is_drawn_to_the_latest_time_and_marked_open():
    records = [rec("done", 0, 0.0, 0.0, 1.0), rec("train", 1, 0.0, 0.5, None, status="running")]
    done, train = bars(parse(task_stream_html(records)))
    assert "jp-Distkernel-running" in train.get("class")
    assert "dashed" in style(train)["border"]
    assert len(style(train)["background-color"]) == 9  # #rrggbbaa: the lighter fill
    assert "border" not in style(done) and len(style(done)["background-color"]) == 7
    assert pct(train, "left") + pct(train, "width") == pytest.approx(100)
    assert pct(done, "left") + pct(done, "width") == pytest.approx(100)
    assert pct(train, "left") == pytest.approx(50)  # started halfway through the chart
    assert "500 ms so far" in title_of(train)


def test_pending_task_is_a_thin_marker_not_a_bar():
    records = [rec("f", 0, 0.0, 0.0, 1.0), rec("g", None, 0.25, None, None, status="pending")]
    chart = parse(task_stream_html(records))
    assert len(bars(chart)) == 1
    (marker,) = by_class(lanes(chart)["queued"], "jp-Distkernel-pending")
    assert style(marker)["height"] == "2px"
    assert pct(marker, "left") == pytest.approx(25)
    assert title_of(marker).startswith("g\nqueued")


def test_queue_segment_before_each_bar_and_drawn_under_the_lanes_bars():
    records = [rec("f", 0, 0.0, 0.2, 0.4), rec("g", 0, 0.1, 0.4, 0.5), rec("h", 1, 0.0, 0.0, 0.1)]
    chart = parse(task_stream_html(records))
    queues = by_class(chart, "jp-Distkernel-queue")
    assert len(queues) == 2  # h never waited
    f_bar = bars(chart)[0]
    assert pct(queues[0], "left") + pct(queues[0], "width") == pytest.approx(pct(f_bar, "left"))
    assert pct(queues[1], "left") == pytest.approx(20) and style(queues[0])["height"] == "4px"
    assert style(queues[0])["background-color"].startswith("#")  # faint: hex with alpha
    # Queue segments overlap earlier bars of the lane; under them they show only in gaps.
    kinds = [e.get("class").split()[0] for e in lanes(chart)["worker 0"]]
    assert kinds == ["jp-Distkernel-queue"] * 2 + ["jp-Distkernel-bar"] * 2


def test_colors_stable_by_name_red_for_failed_grey_for_cancelled():
    records = [
        rec("f", 0, 0.0, 0.0, 0.1),
        rec("f", 1, 0.0, 0.0, 0.2),
        rec("f", 0, 0.2, 0.2, 0.3, status="failed", error="x"),
        rec("f", 1, 0.2, 0.2, 0.3, status="cancelled"),
    ]
    drawn = bars(parse(task_stream_html(records)))  # lane by lane
    fills = {(b.get("class").split()[1], style(b)["background-color"].lower()) for b in drawn}
    assert len(drawn) == 4 and len(fills) == 3  # both finished "f" bars share one color
    assert ("jp-Distkernel-failed", "#e15759") in fills
    assert ("jp-Distkernel-cancelled", "#9e9e9e") in fills


def test_output_is_the_same_in_another_process_with_another_hash_seed():
    script = (
        "import sys; sys.path[:0] = " + repr(sys.path) + "\n"
        "from tests.front.test_display import sample\n"
        "from distkernel.front.timings_view import timings_bundle\n"
        "print(timings_bundle(sample(), mode='full')['text/html'])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == timings_bundle(sample(), mode="full")["text/html"]


def test_zero_length_task_keeps_a_minimum_width():
    records = [rec("long", 0, 0.0, 0.0, 100.0), rec("blink", 0, 50.0, 50.0, 50.0)]
    blink = bars(parse(task_stream_html(records)))[1]
    assert pct(blink, "width") == 0 and style(blink)["min-width"] == "2px"


@pytest.mark.parametrize("span", [2e-6, 0.001, 0.0123, 0.35, 1.0, 7.3, 59.0, 1000.0, 86400.0])
def test_time_axis_has_three_to_six_ticks_within_the_chart(span):
    chart = parse(task_stream_html([rec("f", 0, 0.0, 0.0, span)]))
    ticks = by_class(chart, "jp-Distkernel-tick")
    assert 3 <= len(ticks) <= 6
    assert ticks[0].text == "0 s"
    xs = [pct(t, "left") for t in ticks]
    assert xs == sorted(xs) and xs[0] == 0 and xs[-1] <= 100
    (grid,) = by_class(chart, "jp-Distkernel-grid")
    assert [pct(line, "left") for line in grid] == xs  # a faint line behind each tick
    assert all("1px solid #" in style(line)["border-left"] for line in grid)


def test_lane_names_label_lanes_table_and_text():
    records = [rec("Counter.incr", 3, kind="actor_method"), rec("f", 4, 0.0, 0.0, 0.1)]
    bundle = timings_bundle(records, mode="full", lane_names={3: "Counter#1"})
    (chart,) = by_class(parse(bundle["text/html"]), "jp-Distkernel-stream")
    assert list(lanes(chart)) == ["Counter#1", "worker 4"]
    assert [row[1].text for row in table_rows(bundle["text/html"])] == ["Counter#1", "worker 4"]
    assert "Counter#1: 1 task" in bundle["text/plain"]
    assert "worker 3" not in bundle["text/plain"]


def test_long_lane_label_is_cut_and_whole_in_its_tooltip():
    name = "a-very-long-actor-name-that-goes-on"
    (label,) = by_class(
        parse(task_stream_html([rec(worker=1)], lane_names={1: name})), "jp-Distkernel-label"
    )
    assert len(label.text) == 24 and label.text.endswith("\u2026")
    assert label.get("title") == name


def test_narrow_width_is_rejected():
    with pytest.raises(ValueError, match="got 50"):
        task_stream_html(sample(), width=50)


# ---------------------------------------------------------------- bundles


def all_bundles() -> list[dict[str, str]]:
    hostile = [rec("</style><script>alert(1)</script>", 0), *sample()]
    cancelled = rec("c", 1, 0.1, 0.1, 0.2, status="cancelled")
    many = [rec(f"t{i}", i % 3, i * 0.01, i * 0.01, i * 0.01 + 0.005) for i in range(60)]
    return [
        timings_bundle(hostile, mode="full", title="<script>x</script>"),
        timings_bundle([*hostile, cancelled], mode="full", lane_names={5: "Counter"}),
        timings_bundle(many, mode="full"),
        timings_bundle(hostile),
        timeline_bundle(hostile, title="<script>x</script>"),
        timings_bundle([], title="t"),
    ]


@pytest.mark.parametrize("bundle", all_bundles())
def test_bundle_is_one_div_of_html_a_sanitizer_keeps(bundle):
    markup = bundle["text/html"]
    root = parse(markup)
    assert root.tag == "div" and root.get("class") == "jp-Distkernel-timings"
    assert set(bundle) == {"text/html", "text/plain"}
    lowered = markup.lower()
    for banned in ("<script", "<svg", "<style", "var(", "calc(", "url("):
        assert banned not in lowered
    tags = {e.tag for e in root.iter()}
    assert tags <= {"div", "table", "thead", "tbody", "tr", "th", "td"}
    for element in root.iter():
        assert set(element.attrib) <= {"class", "style", "title", "colspan"}
        for prop, value in style(element).items():
            assert prop in ALLOWED_STYLES, f"{prop} would be stripped"
            assert re.fullmatch(ALLOWED_STYLES[prop], value, re.IGNORECASE), f"{prop}:{value}"


def test_text_inherits_the_theme_color_except_status_colors():
    root = parse(all_bundles()[1]["text/html"])
    colored = [e for e in root.iter() if "color" in style(e)]
    assert colored and all(e.get("class") == "jp-Distkernel-status-failed" for e in colored)
    (cancelled,) = by_class(root, "jp-Distkernel-status-cancelled")
    assert style(cancelled)["opacity"] == "0.7"  # muted, in the theme's own color
    for element in by_class(root, "jp-Distkernel-tick"):
        assert style(element)["opacity"] == "0.7"
    for element in by_class(root, "jp-Distkernel-label"):  # lane labels: full theme color
        assert "opacity" not in style(element) and style(element)["font-size"] == "12px"


def test_the_chart_has_a_legend_and_marks_workers_starting():
    records = sample()
    t0 = min(r.submitted for r in records)
    lane = next(r.worker_id for r in records if r.worker_id is not None)
    bundle = timings_bundle(records, ready_at={lane: t0 + 0.05})
    root = parse(bundle["text/html"])
    legend = " ".join("".join(e.itertext()) for e in by_class(root, "jp-Distkernel-legendItem"))
    for name in {r.name for r in records if r.status not in ("failed", "cancelled")}:
        assert name in legend
    assert "worker starting" in legend and "waiting in the queue" in legend
    assert len(by_class(root, "jp-Distkernel-starting")) == 1
    assert "of it workers starting" in bundle["text/plain"]
    assert not by_class(parse(timings_bundle(records)["text/html"]), "jp-Distkernel-starting")


def test_timeline_bundle_is_the_chart_with_a_short_text_fallback():
    bundle = timeline_bundle(sample(), title="last 7 tasks", lane_names={5: "Counter"})
    root = parse(bundle["text/html"])
    assert by_class(root, "jp-Distkernel-stream") and root.find(".//table") is None
    assert len(bars(root)) == 6
    lines = bundle["text/plain"].splitlines()
    assert lines[0] == "last 7 tasks" and lines[1].startswith("7 tasks")
    assert "  Counter: 1 task, busy 59 ms" in lines
    assert "  queued: 1 not started" in lines


def test_empty_records():
    for bundle in (
        timings_bundle([]),
        timings_bundle([], mode="full", title="cell 3"),
        timeline_bundle([]),
    ):
        assert "no tasks" in bundle["text/plain"]
        root = parse(bundle["text/html"])
        assert "no tasks" in "".join(root.itertext())
        assert root.find(".//table") is None
    assert timings_bundle([], title="cell 3")["text/plain"] == "cell 3\nno tasks"
    assert "no tasks" in "".join(parse(task_stream_html([])).itertext())


def test_unknown_mode_lists_the_choices():
    with pytest.raises(ValueError, match="summary, full"):
        timings_bundle(sample(), mode="verbose")  # type: ignore[arg-type]
