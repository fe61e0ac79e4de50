"""What a call running in a Ray worker prints, and the tasks it submits, kept for its
report (``runner``).

Ray would write a worker's output to its log, and the driver would print it under
whichever cell runs when it arrives; we keep it per call instead, and the driver writes it
under the cell that submitted the call (and files the call's children there too).
Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from typing import Any


class _TaskStreams(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a Ray worker while our tasks run: what a running
    call writes is kept for its report; anything else goes on as before. The buffers
    are per call (a context variable), since an actor may run several calls at once, in
    threads or as coroutines."""

    def __init__(self, original: Any, stream: str) -> None:
        self._original = original
        self._stream = stream

    def write(self, text: str) -> int:
        buffers = call_buffers.get()
        if buffers is None:
            self._original.write(text)  # Ray's own streams return None here
        else:
            buffers.setdefault(self._stream, []).append(text)
        return len(text)

    def flush(self) -> None:
        if call_buffers.get() is None:
            self._original.flush()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._original, "encoding", "utf-8"))

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._original.fileno())


#: What the running call collects: its output by stream, and under "children" the ids of
#: the tasks it submits (each list made when first needed: most calls need none).
call_buffers: contextvars.ContextVar[dict[str, list[str]] | None] = contextvars.ContextVar(
    "distkernel_task_output", default=None)


def submitted_here(task_id: str) -> None:
    """A task was submitted by the call running now, if any (its report lists it)."""
    buffers = call_buffers.get()
    if buffers is not None:
        buffers.setdefault("children", []).append(task_id)


_install_lock = threading.Lock()


def capture_streams() -> None:
    """Route ``sys.stdout`` / ``sys.stderr`` through ``_TaskStreams`` (once, and again if a
    task put others in their place)."""
    if type(sys.stdout) is _TaskStreams and type(sys.stderr) is _TaskStreams:
        return  # installed already (tested without the lock: this runs for every call)
    with _install_lock:
        if not isinstance(sys.stdout, _TaskStreams):
            sys.stdout = _TaskStreams(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _TaskStreams):
            sys.stderr = _TaskStreams(sys.stderr, "stderr")
