"""Worker output under the cell that submitted the task, as displays that grow in place.

::

    worker print() ─▶ Output message ─▶ reader thread ─▶ CellOutput.write(task)
        task -> cell tag (the execute_request's msg_id, taken when the task was submitted)
        cell + worker -> one display: display_data first, update_display_data after,
        sent on IOPub with THAT cell's parent header, so it lands under that cell even
        when another cell is running by then (JupyterLab keeps a finished cell's
        output area listening until the cell runs again).

Output is rate-limited per cell (a token bucket): past the limit lines are
counted, not shown, and the display says how many were suppressed. Updates of
one display are sent at most every ``MIN_INTERVAL`` seconds.
"""

from __future__ import annotations

import html
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Lines a cell may show at once, and per second after that.
BURST_LINES = 500
LINES_PER_SECOND = 100
#: Lines kept in one display (older ones are dropped, with a note).
MAX_LINES = 2000
MIN_INTERVAL = 0.1


@dataclass
class _Display:
    display_id: str
    worker_id: int
    label: str = ""  # its title; "worker <id>" when not given
    lines: list[tuple[str, str]] = field(default_factory=list)  # (stream, line)
    dropped: int = 0
    shown: bool = False
    last_sent: float = 0.0
    timer: threading.Timer | None = None


@dataclass
class _Bucket:
    tokens: float = BURST_LINES
    stamp: float = field(default_factory=time.monotonic)
    suppressed: int = 0

    def take(self, count: int) -> int:
        """How many of ``count`` lines may be shown now."""
        now = time.monotonic()
        self.tokens = min(BURST_LINES, self.tokens + (now - self.stamp) * LINES_PER_SECOND)
        self.stamp = now
        allowed = min(count, int(self.tokens))
        self.tokens -= allowed
        self.suppressed += count - allowed
        return allowed


def _flush_streams() -> None:
    """Send what the running cell printed so far before a display, as IPython's own
    ``display()`` does: the kernel sends printed text a moment after it is written, and a
    display sent meanwhile (from another thread) would land above the cell's last lines,
    or inside a line cut in two. (The kernel's streams flush from any thread, waiting for
    its I/O thread.)"""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed (the kernel shutting down): nothing to send
            pass


class CellOutput:
    """Routes task output to the submitting cell; falls back when a task has no cell."""

    def __init__(self, kernel: Any, tag_of: Callable[[str], str | None],
                 fallback: Callable[[int, str, str, str], None]) -> None:
        self._kernel = kernel
        self._tag_of = tag_of
        self._fallback = fallback
        self._parents: dict[str, Any] = {}
        self._displays: dict[tuple[str, int], _Display] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._muted: set[str] = set()
        self._lock = threading.RLock()

    @property
    def can_show(self) -> bool:
        """Whether displays can be sent under a cell: only in a kernel."""
        return self._kernel is not None

    def current_tag(self) -> str | None:
        """The running cell's tag (its execute_request msg_id), remembering its header."""
        parent = self._kernel.get_parent("shell") if self._kernel is not None else None
        msg_id = (parent or {}).get("header", {}).get("msg_id")
        if not msg_id:
            return None
        if msg_id in self._parents:  # known: no lock (this runs for every submission,
            return msg_id  # and a display being sent holds the lock while streams flush)
        with self._lock:
            self._parents[msg_id] = parent
            if len(self._parents) > 1000:  # keep the latest cells only
                for old in list(self._parents)[:200]:
                    self._forget(old)
        return msg_id

    def write(self, worker_id: int, task_id: str, stream: str, text: str) -> None:
        """Output handler of the engine (called by its reader, lock released: the I/O
        thread, or the main thread while it waits in get)."""
        tag = self._tag_of(task_id)
        if tag in self._muted:
            return
        if tag is None or tag not in self._parents:
            self._fallback(worker_id, task_id, stream, text)
            return
        lines = text.splitlines()
        with self._lock:
            bucket = self._buckets.setdefault(tag, _Bucket())
            allowed = bucket.take(len(lines))
            display = self._display(tag, worker_id)
            display.lines.extend((stream, line) for line in lines[:allowed])
            if len(display.lines) > MAX_LINES:
                display.dropped += len(display.lines) - MAX_LINES
                del display.lines[:len(display.lines) - MAX_LINES]
            self._schedule(tag, display)

    def reserve(self, tag: str, labels: dict[int, str]) -> None:
        """Output groups for these workers, titled and in this order, before any output
        arrives (``%%remote -n N`` / ``--all``: worker order, not arrival order)."""
        with self._lock:
            parent = self._parents.get(tag)
            if parent is None or tag in self._muted:
                return
            for worker_id, label in labels.items():
                display = self._display(tag, worker_id)
                display.label = label
                self._publish(parent, display.display_id, {"text/plain": ""}, update=False)
                display.shown = True

    def mute(self, tag: str) -> None:
        """Drop the output of this cell's tasks (``%%remote --quiet``)."""
        self._muted.add(tag)

    def muted(self, tag: str) -> bool:
        return tag in self._muted

    def flush(self, tag: str) -> None:
        """Send what is pending for a cell now (at the end of the cell)."""
        with self._lock:
            for (cell, _), display in self._displays.items():
                if cell == tag and display.timer is not None:
                    display.timer.cancel()
                    display.timer = None
                    self._send(cell, display)

    def _display(self, tag: str, worker_id: int) -> _Display:
        key = (tag, worker_id)
        display = self._displays.get(key)
        if display is None:
            display = self._displays[key] = _Display(f"distkernel-{uuid.uuid4().hex}", worker_id)
        return display

    def _schedule(self, tag: str, display: _Display) -> None:
        wait = display.last_sent + MIN_INTERVAL - time.monotonic()
        if wait <= 0:
            self._send(tag, display)
        elif display.timer is None:
            display.timer = threading.Timer(wait, self._send_later, (tag, display))
            display.timer.daemon = True
            display.timer.start()

    def _send_later(self, tag: str, display: _Display) -> None:
        with self._lock:
            display.timer = None
            self._send(tag, display)

    def _send(self, tag: str, display: _Display) -> None:
        parent = self._parents.get(tag)
        if parent is None:
            return
        suppressed = self._buckets[tag].suppressed if tag in self._buckets else 0
        self._publish(parent, display.display_id, _bundle(display, suppressed),
                      update=display.shown)
        display.shown = True
        display.last_sent = time.monotonic()

    def show(self, tag: str, display_id: str, bundle: dict[str, str], *, update: bool) -> bool:
        """Show ``bundle`` under the cell ``tag`` (``update``: replace the display
        ``display_id`` shown there before); False if the cell is not known."""
        with self._lock:
            parent = self._parents.get(tag)
        if parent is None or tag in self._muted:
            return False
        self._publish(parent, display_id, bundle, update=update)
        return True

    def _publish(self, parent: Any, display_id: str, bundle: dict[str, str], *,
                 update: bool) -> None:
        _flush_streams()
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": display_id}}
        msg_type = "update_display_data" if update else "display_data"
        session = self._kernel.session
        message = session.msg(msg_type, content, parent=parent)
        session.send(self._kernel.iopub_socket, message, ident=b"display_data")

    def _forget(self, tag: str) -> None:
        self._parents.pop(tag, None)
        self._muted.discard(tag)
        self._buckets.pop(tag, None)
        for key in [k for k in self._displays if k[0] == tag]:
            display = self._displays.pop(key)
            if display.timer is not None:
                display.timer.cancel()


def _notes(display: _Display, suppressed: int) -> list[str]:
    notes = []
    if display.dropped:
        notes.append(f"… {display.dropped} earlier lines not shown")
    if suppressed:
        notes.append(f"… {suppressed} lines suppressed (output limit: "
                     f"{LINES_PER_SECOND} lines/s per cell)")
    return notes


def _bundle(display: _Display, suppressed: int) -> dict[str, str]:
    """text/plain and text/html of one worker's output in one cell."""
    label = display.label or f"worker {display.worker_id}"
    notes = _notes(display, suppressed)
    plain = "\n".join([f"[{label}]", *notes, *(line for _, line in display.lines)])
    rows = []
    for stream, line in display.lines:
        escaped = html.escape(line)
        rows.append(f'<span class="jp-Distkernel-stderr">{escaped}</span>'
                    if stream == "stderr" else escaped)
    note_html = "".join(f'<div class="jp-Distkernel-note">{html.escape(n)}</div>' for n in notes)
    body = "\n".join(rows)
    page = (f'<div class="jp-Distkernel-output"><style>'
            f".jp-Distkernel-output pre{{margin:0;white-space:pre-wrap;"
            f"font-size:var(--jp-code-font-size);line-height:var(--jp-code-line-height)}}"
            f".jp-Distkernel-stderr{{background:var(--jp-rendermime-error-background,#fdd)}}"
            f".jp-Distkernel-label,.jp-Distkernel-note{{font-size:85%;"
            f"color:var(--jp-ui-font-color2,#777)}}</style>"
            f'<div class="jp-Distkernel-label">{html.escape(label)}</div>{note_html}'
            f"<pre>{body}</pre></div>")
    return {"text/plain": plain, "text/html": page}
