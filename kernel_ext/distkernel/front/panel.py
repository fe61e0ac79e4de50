"""The side panel's line into the kernel: a comm named ``distkernel`` (SPEC §6).

::

    panel ──comm_open──▶ PanelChannel ──update (≤ 4/s, background thread)──▶ panel
          ──{"action": "scale", "workers": 3, "request": "r1"}──▶ reply {"ok": ...}

While at least one panel is open, a background thread sends each one a picture of
the cluster (``panel_model.update``) every PUSH_INTERVAL seconds, so the panel stays
live while a cell keeps the main thread busy. JupyterLab (4.4 and later) sends the
panel's messages on a kernel subshell when the kernel has subshells (ipykernel 7), so
its actions run at once, on the subshell's thread, even while a cell runs; with an
older kernel they wait for the running cell to end. Every message is checked: a
malformed one gets an error reply, never a traceback in the kernel.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from distkernel.api import runtime
from distkernel.backends.base import Engine
from distkernel.front import panel_model

COMM_TARGET = "distkernel"
#: Seconds between two updates to a panel: at most four a second.
PUSH_INTERVAL = 0.25
#: The tasks-per-second figure is over this many seconds.
RATE_WINDOW = 5.0
#: Records read per update: enough for the task table and the stream, bounded.
RECORDS_PER_UPDATE = panel_model.STREAM_MAX
#: The largest pool the panel may ask for.
MAX_WORKERS = 1024


class BadRequest(ValueError):
    """A panel message that does not say something we do: the reply says why."""


class PanelChannel:
    """The comm target and the open panels of one kernel."""

    def __init__(self, comm_manager: Any, cell_number: panel_model.CellNumber) -> None:
        self._manager = comm_manager
        self._cell_number = cell_number
        self._comms: dict[str, Any] = {}
        self._opened_by: dict[str, dict[str, Any]] = {}  # comm id -> its comm_open message
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finished: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tasks done)

    def register(self) -> None:
        self._manager.register_target(COMM_TARGET, self._on_open)

    def close(self) -> None:
        """Unregister the target, close the open panels' comms, stop the thread."""
        self._manager.unregister_target(COMM_TARGET, self._on_open)
        with self._lock:
            self._closed = True
            comms, self._comms = list(self._comms.values()), {}
            thread = self._thread
        for comm in comms:
            comm.close(data={"type": "closed", "reason": "distkernel was unloaded"})
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    # -- comms ------------------------------------------------------------------------------

    def _on_open(self, comm: Any, open_msg: dict[str, Any]) -> None:
        with self._lock:
            if self._closed:
                comm.close()
                return
            self._comms[comm.comm_id] = comm
            self._opened_by[comm.comm_id] = open_msg
            if self._thread is None:
                self._thread = threading.Thread(target=self._push_forever,
                                                name="distkernel-panel", daemon=True)
                self._thread.start()
        comm.on_msg(self._on_msg)
        comm.on_close(self._on_close)
        self._wake.set()  # the first picture now

    def _on_close(self, msg: dict[str, Any]) -> None:
        comm_id = msg.get("content", {}).get("comm_id")
        with self._lock:
            self._comms.pop(comm_id, None)
            self._opened_by.pop(comm_id, None)

    def _on_msg(self, msg: dict[str, Any]) -> None:
        content = msg.get("content") if isinstance(msg, dict) else None
        comm_id = content.get("comm_id") if isinstance(content, dict) else None
        with self._lock:
            comm = self._comms.get(comm_id) if isinstance(comm_id, str) else None
        if comm is None:
            return
        data = content.get("data") if isinstance(content, dict) else None
        request = data.get("request") if isinstance(data, dict) else None
        try:
            message = act(data)
        except BadRequest as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - said to the panel, not a kernel traceback
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            reply = {"ok": True, "message": message}
        comm.send({"type": "reply", "request": request if isinstance(request, str) else None,
                   **reply})
        self._wake.set()  # show what the action changed at once

    # -- updates ----------------------------------------------------------------------------

    def _push_forever(self) -> None:
        sent_at = 0.0
        while True:
            self._wake.wait(PUSH_INTERVAL)
            self._wake.clear()
            gap = sent_at + PUSH_INTERVAL - time.monotonic()
            if gap > 0:  # woken early (a panel opened, an action): still at most 4 a second
                time.sleep(gap)
            with self._lock:
                comms = [(comm, self._opened_by[comm_id]) for comm_id, comm in self._comms.items()]
                if self._closed or not comms:
                    self._thread = None
                    return
            try:
                message = self.update()
            except Exception:  # noqa: BLE001 - a cluster shut down meanwhile: next round
                continue
            finally:
                sent_at = time.monotonic()
            for comm, open_msg in comms:
                try:
                    _push(comm, open_msg, message)
                except Exception:  # noqa: BLE001 - a comm closing meanwhile: next round drops it
                    continue

    def update(self) -> dict[str, Any]:
        """The message every open panel gets now."""
        engine = runtime.current_engine()
        if engine is None or engine.closing:
            return panel_model.update(None, [], _no_cell, self._cell_number, None)
        snapshot = engine.snapshot()
        records = engine.timeline(last=RECORDS_PER_UPDATE)
        return panel_model.update(snapshot, records, engine.cell_of_task, self._cell_number,
                                  self._rate(snapshot.taken_at, snapshot.counters))

    def _rate(self, now: float, counters: Any) -> float | None:
        """Tasks ended per second over the last RATE_WINDOW seconds."""
        done = counters.finished + counters.failed + counters.cancelled
        samples = self._finished
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        first_time, first_done = samples[0]
        if now - first_time <= 0 or done < first_done:  # a restart starts the count again
            samples.clear()
            samples.append((now, done))
            return None
        return (done - first_done) / (now - first_time)


def _push(comm: Any, open_msg: dict[str, Any], data: dict[str, Any]) -> None:
    """Send ``data`` on ``comm`` from the pushing thread, as a reply to its comm_open.

    Not ``comm.send``: ipykernel routes a comm's next incoming message to the subshell of
    whatever message was being handled when the comm last sent, and from this thread that
    is the running cell's, the main shell; the panel's actions would then wait for the
    cell. With the comm_open as parent, they keep going to the panel's subshell.
    """
    kernel = getattr(comm, "kernel", None)
    if kernel is None or kernel.session is None:
        comm.send(data)
        return
    content = {"data": data, "comm_id": comm.comm_id}
    kernel.session.send(kernel.iopub_socket, "comm_msg", content, parent=open_msg,
                        ident=comm.topic)


def _no_cell(task_id: str) -> str | None:
    return None


# -- actions ---------------------------------------------------------------------------------

def act(data: Any) -> str:
    """Carry out one panel message; what happened, in words. BadRequest if malformed."""
    if not isinstance(data, dict):
        msg = "a panel message must be a JSON object with an 'action'"
        raise BadRequest(msg)
    action = data.get("action")
    handler = ACTIONS.get(action) if isinstance(action, str) else None
    if handler is None:
        msg = f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}"
        raise BadRequest(msg)
    return handler(data)


def _engine() -> Engine:
    engine = runtime.current_engine()
    if engine is None:
        msg = ("no distkernel cluster runs in this kernel: run dk.init() or "
               "%dist init")
        raise BadRequest(msg)
    return engine


def _scale(data: dict[str, Any]) -> str:
    workers = data.get("workers")
    if type(workers) is not int or not 1 <= workers <= MAX_WORKERS:
        msg = (f"'workers' must be a whole number from 1 to {MAX_WORKERS}, "
               f"got {workers!r}")
        raise BadRequest(msg)
    _engine().resize(workers)
    return f"scaling the pool to {workers} workers"


def _restart(data: dict[str, Any]) -> str:
    _engine()
    info = runtime.restart()
    return f"restarted: {info.num_workers} new workers"


def _cancel(data: dict[str, Any]) -> str:
    task_id = _text_field(data, "task_id")
    force = data.get("force", False)
    if not isinstance(force, bool):
        msg = f"'force' must be true or false, got {force!r}"
        raise BadRequest(msg)
    if not _engine().cancel_task(task_id, force=force):
        msg = f"task {task_id} is not running or queued (it may have ended)"
        raise BadRequest(msg)
    return f"cancelling task {task_id}"


def _kill_actor(data: dict[str, Any]) -> str:
    actor_id = _text_field(data, "actor_id")
    engine = _engine()
    if not any(actor.actor_id == actor_id for actor in engine.snapshot().actors):
        msg = f"there is no actor {actor_id}"
        raise BadRequest(msg)
    engine.kill_actor(actor_id, no_restart=True)
    return f"killed actor {actor_id}"


def _refresh(data: dict[str, Any]) -> str:
    return "ok"


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > 200:
        msg = f"{name!r} must be a non-empty string, got {value!r}"
        raise BadRequest(msg)
    return value


ACTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "scale": _scale, "restart": _restart, "cancel": _cancel, "kill_actor": _kill_actor,
    "refresh": _refresh,
}
