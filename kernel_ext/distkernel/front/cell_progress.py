"""Progress under a running cell, then its timings, redrawn when late tasks end.

While a cell runs, a background thread looks at the cell's tasks every TICK seconds
and shows one line under the cell, updated in place (done / running / queued /
failed of total, elapsed). When the cell ends, that same display becomes the
timings chart. Tasks still unfinished then (``late``) keep the cell watched: when
they end, its chart is drawn again, so no chart is left "running".

Everything is sent as displays with the cell's own parent header (``CellOutput``),
so it lands under its cell whichever cell runs by then.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distkernel.api import runtime
from distkernel.core.timings import TaskRecord
from distkernel.front.cell_output import CellOutput

#: Seconds between two looks at the running cells: at most four redraws a second.
TICK = 0.25
#: Cells whose late tasks are still watched after they ended (the oldest are dropped).
MAX_LATE_CELLS = 50
#: A late cell is let go after this many seconds even if its tasks never end.
LATE_FOR_AT_MOST = 3600.0

#: Draws a cell's records as a mime bundle (the timings view).
Draw = Callable[[Sequence[TaskRecord]], "dict[str, str] | None"]


@dataclass
class _Watched:
    tag: str
    started: float  # monotonic
    display_id: str
    shown: bool = False
    last_counts: tuple[int, ...] = ()
    ended_at: float | None = None  # monotonic, once the cell ended
    draw: Draw | None = None  # for a late cell: how to draw its timings again


class CellProgress:
    """The progress lines of running cells and the charts of cells with late tasks."""

    def __init__(self, output: CellOutput) -> None:
        self._output = output
        self._cells: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def cell_started(self, tag: str) -> None:
        with self._lock:
            display_id = f"distkernel-cell-{uuid.uuid4().hex}"
            self._cells[tag] = _Watched(tag, time.monotonic(), display_id)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._watch, name="distkernel-progress",
                                                daemon=True)
                self._thread.start()

    def cell_ended(self, tag: str, records: Sequence[TaskRecord], draw: Draw) -> bool:
        """The cell is done: its progress line becomes ``draw(records)`` (or goes, when
        nothing is drawn); with tasks unfinished it is drawn again as they end. False if
        the cell was not watched (nothing was shown: the caller shows the timings)."""
        with self._lock:
            watched = self._cells.get(tag)
            if watched is None:
                return False
            if any(r.finished is None for r in records):
                watched.ended_at, watched.draw = time.monotonic(), draw
                watched.last_counts = _counts(records)
                self._forget_oldest_late()
            else:
                del self._cells[tag]
            bundle = draw(records) if records else None
            if bundle is not None:
                self._show(watched, bundle)
            elif watched.shown:  # a progress line with nothing to draw instead: clear it
                self._show(watched, {"text/plain": ""})
            return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._cells.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _forget_oldest_late(self) -> None:
        late = [w for w in self._cells.values() if w.ended_at is not None]
        for watched in late[:-MAX_LATE_CELLS]:
            del self._cells[watched.tag]

    def _watch(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                if self._stopped or not self._cells:
                    self._thread = None
                    return
                cells = list(self._cells.values())
            engine = runtime.current_engine()
            if engine is None or engine.closing:
                continue
            for watched in cells:
                try:
                    self._look(watched, engine.timeline(cell=watched.tag))
                except Exception:  # noqa: BLE001 - a cluster going away meanwhile: next tick
                    continue

    def _look(self, watched: _Watched, records: Sequence[TaskRecord]) -> None:
        if not records:
            return
        counts = _counts(records)
        with self._lock:  # the cell may have ended meanwhile: cell_ended drew it then
            if self._cells.get(watched.tag) is not watched:
                return
            if watched.ended_at is None:  # running: the progress line, every tick
                watched.last_counts = counts
                self._show(watched, progress_bundle(records, time.monotonic() - watched.started))
                return
            if counts == watched.last_counts:
                return
            watched.last_counts = counts  # late tasks ended: draw the chart again
            bundle = watched.draw(records) if watched.draw is not None else None
            if bundle is not None:
                self._show(watched, bundle)
            done = all(r.finished is not None for r in records)
            if done or time.monotonic() - watched.ended_at > LATE_FOR_AT_MOST:
                del self._cells[watched.tag]

    def _show(self, watched: _Watched, bundle: dict[str, str]) -> None:
        self._output.show(watched.tag, watched.display_id, bundle, update=watched.shown)
        watched.shown = True


def _counts(records: Sequence[TaskRecord]) -> tuple[int, ...]:
    statuses = Counter(r.status for r in records)
    return (len(records), statuses["finished"], statuses["running"], statuses["pending"],
            statuses["failed"], statuses["cancelled"])


def progress_bundle(records: Sequence[TaskRecord], elapsed: float) -> dict[str, str]:
    """The one-line progress of a running cell, as text and HTML."""
    total, done, running, queued, failed, cancelled = _counts(records)
    parts = [f"{done} done", f"{running} running", f"{queued} queued"]
    if failed:
        parts.append(f"{failed} failed")
    if cancelled:
        parts.append(f"{cancelled} cancelled")
    text = f"{' · '.join(parts)} of {total} tasks · {elapsed:.1f} s"
    share = (done + failed + cancelled) / total if total else 0.0
    page = (f'<div class="jp-Distkernel-progress" style="display:flex;align-items:center;'
            f'gap:8px;font-size:var(--jp-content-font-size1,13px)">'
            f'<progress value="{share:.3f}" max="1" style="width:140px"></progress>'
            f"<span>{html.escape(text)}</span></div>")
    return {"text/plain": text, "text/html": page}
