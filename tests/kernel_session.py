"""A real Jupyter kernel driven through jupyter_client, as a notebook front end would."""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import jupyter_client

from distkernel.store import reaper


@dataclass
class CellRun:
    """What one execute_request produced: its messages (by parent) and its reply."""

    msg_id: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)
    idle: bool = False  # the kernel said it is done with this cell

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.outputs if m["msg_type"] in types]

    def final_displays(self) -> list[dict[str, Any]]:
        """Each display's data as it was last shown, in the order first shown: a cell that
        runs long enough shows a progress line first, which then becomes its timings."""
        shown: dict[str, dict[str, Any]] = {}
        for number, message in enumerate(self.of_type("display_data", "update_display_data")):
            content = message["content"]
            display_id = content.get("transient", {}).get("display_id") or f"#{number}"
            shown[display_id] = content["data"]
        return list(shown.values())

    def timings(self) -> list[dict[str, Any]]:
        """The timings the cell ended with (each display's data)."""
        return [data for data in self.final_displays()
                if "jp-Distkernel-timings" in data.get("text/html", "")]

    def text(self) -> str:
        """Everything shown, as text: streams, text/plain of results and displays, errors."""
        parts = []
        for message in self.outputs:
            content = message["content"]
            if message["msg_type"] == "stream":
                parts.append(content["text"])
            elif "data" in content:
                parts.append(content["data"].get("text/plain", ""))
            elif message["msg_type"] == "error":
                parts.extend(content["traceback"])
        return "\n".join(parts)

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"


class KernelSession:
    """Start a kernel, run cells, collect every IOPub message by its parent cell."""

    def __init__(self, kernel_name: str = "python3", env: dict[str, str] | None = None) -> None:
        self.manager, self.client = jupyter_client.manager.start_new_kernel(
            kernel_name=kernel_name, env=env or dict(os.environ))
        self.pid = self.manager.provisioner.process.pid  # type: ignore[union-attr]
        self.stray: list[dict[str, Any]] = []  # messages of cells that already finished
        self.comm_messages: list[dict[str, Any]] = []  # comm_msg / comm_close, any parent
        self._runs: dict[str, CellRun] = {}

    def run(self, code: str, timeout: float = 60, wait: bool = True) -> CellRun:
        msg_id = self.client.execute(code)
        run = self._runs[msg_id] = CellRun(msg_id)
        if wait:
            self.wait(run, timeout)
        return run

    def wait(self, run: CellRun, timeout: float = 60) -> CellRun:
        """Collect messages until the cell's kernel goes idle, and its reply."""
        deadline = time.monotonic() + timeout
        while not run.idle:
            self._file(self._next(deadline))
        while True:  # skip stale replies (wait_for_ready can leave a kernel_info_reply)
            reply = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
            if reply["parent_header"].get("msg_id") == run.msg_id:
                break
        run.reply = reply["content"]
        return run

    def collect(self, seconds: float) -> None:
        """Keep reading IOPub for a while (late output of finished cells)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._file(self._next(deadline))
            except TimeoutError:
                return

    def _next(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            return self.client.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            raise TimeoutError from None

    def _file(self, message: dict[str, Any]) -> None:
        run = self._runs.get(message["parent_header"].get("msg_id"))
        if message["msg_type"] == "status":
            if run is not None and message["content"]["execution_state"] == "idle":
                run.idle = True
            return
        if message["msg_type"] == "execute_input":
            return
        if message["msg_type"] in ("comm_msg", "comm_close"):
            self.comm_messages.append(message)
            return
        if run is not None:
            run.outputs.append(message)
        else:
            self.stray.append(message)

    def shutdown(self) -> None:
        """Stop the kernel; its workers and segments must go with it."""
        try:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=False)
        except Exception:  # noqa: BLE001 - already dead (killed by the test)
            self.manager.shutdown_kernel(now=True)
        leftovers = reaper.segments_of(self.pid)
        assert not leftovers, f"the kernel left segments behind: {leftovers}"
