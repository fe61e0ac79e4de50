"""The side panel's comm, driven through a real kernel as JupyterLab drives it: opened
on the kernel, updates pushed while a cell runs, actions sent on a kernel subshell and
carried out while the cell still runs, malformed messages answered with an error."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.kernel_session import KernelSession

BUSY_CELL = """
import time, distkernel as dk
@dk.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds
dk.get([nap.remote(1.5) for _ in range(6)])
"""


class PanelLink:
    """The panel's end of the comm: open it, send actions (on a subshell if given)."""

    def __init__(self, session: KernelSession, subshell: str | None = None) -> None:
        self.session = session
        self.subshell = subshell
        self.comm_id = uuid.uuid4().hex
        self._send("comm_open", {"comm_id": self.comm_id, "target_name": "distkernel",
                                 "data": {}})

    def _send(self, msg_type: str, content: dict[str, Any]) -> None:
        client = self.session.client
        message = client.session.msg(msg_type, content)
        if self.subshell is not None:
            message["header"]["subshell_id"] = self.subshell
        client.shell_channel.send(message)

    def act(self, **data: Any) -> str:
        request = uuid.uuid4().hex
        self._send("comm_msg", {"comm_id": self.comm_id, "data": {**data, "request": request}})
        return request

    def send_raw(self, data: Any) -> None:
        self._send("comm_msg", {"comm_id": self.comm_id, "data": data})

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m["content"]["data"] for m in self.session.comm_messages
                if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == self.comm_id
                and m["content"]["data"].get("type") == kind]

    def closed(self) -> bool:
        return any(m["msg_type"] == "comm_close" and m["content"]["comm_id"] == self.comm_id
                   for m in self.session.comm_messages)

    def reply(self, request: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.messages("reply") if r.get("request") == request]
            if found:
                return found[0]
            self.session.collect(0.1)
        raise AssertionError(f"no reply to {request} within {timeout} s")

    def update_where(self, check: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [u for u in self.messages("update") if check(u)]
            if found:
                return found[-1]
            self.session.collect(0.1)
        raise AssertionError(f"no update matched within {timeout} s; last: "
                             f"{(self.messages('update') or [None])[-1]}")


def create_subshell(session: KernelSession) -> str:
    client = session.client
    client.control_channel.send(client.session.msg("create_subshell_request", {}))
    reply = client.get_control_msg(timeout=10)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply["content"]["subshell_id"]


@pytest.fixture(params=["distkernel", "python3"])
def kernel(request):
    """The distkernel kernel, and a plain ipykernel after %load_ext distkernel."""
    session = KernelSession(request.param)
    if request.param == "python3":
        assert session.run("%load_ext distkernel").ok
    else:
        assert session.run("import distkernel as dk; dk.get(dk.put(1))").ok
    yield session
    session.shutdown()


def test_the_panel_sees_the_cluster_change_and_acts_while_a_cell_runs(kernel):
    panel = PanelLink(kernel, create_subshell(kernel))
    first = panel.update_where(lambda u: u["cluster"] is not None)
    assert first["version"] == 1
    assert first["cluster"]["num_workers"] >= 1
    assert first["cluster"]["store"]["capacity"] > 0

    cell = kernel.run(BUSY_CELL, wait=False)
    busy = panel.update_where(lambda u: u["cluster"]["running"] > 0 and any(
        w["task"] == "nap" and w["since"] for w in u["cluster"]["workers"]))
    assert any(t["name"] == "nap" for t in busy["tasks"])

    target = busy["cluster"]["num_workers"] + 1
    reply = panel.reply(panel.act(action="scale", workers=target))
    assert reply["ok"], reply
    panel.update_where(lambda u: u["cluster"]["num_workers"] == target)
    assert not cell.idle, "the scale action waited for the cell to end"

    kernel.wait(cell)
    assert cell.ok, cell.text()
    done = panel.update_where(lambda u: u["cluster"]["counters"]["finished"] >= 6
                              and u["cluster"]["running"] == 0)
    assert any(t["name"] == "nap" and t["status"] == "finished" and t["cell"] is not None
               for t in done["tasks"])
    assert done["stream"], "the task stream is empty after six tasks ran"


def test_restart_and_cancel_from_the_panel(kernel):
    panel = PanelLink(kernel, create_subshell(kernel))
    before = panel.update_where(lambda u: u["cluster"] is not None)["cluster"]["cluster_id"]
    cell = kernel.run(BUSY_CELL.replace("1.5", "20"), wait=False)
    running = panel.update_where(lambda u: any(w["task"] == "nap"
                                               for w in u["cluster"]["workers"]))
    task_id = next(w["task_id"] for w in running["cluster"]["workers"] if w["task"] == "nap")
    assert panel.reply(panel.act(action="cancel", task_id=task_id))["ok"]
    panel.update_where(lambda u: any(t["id"] == task_id and t["status"] == "cancelled"
                                     for t in u["tasks"]))
    reply = panel.reply(panel.act(action="restart"), timeout=20)
    assert reply["ok"], reply
    panel.update_where(lambda u: u["cluster"] is not None
                       and u["cluster"]["cluster_id"] != before)
    kernel.wait(cell, timeout=30)  # the cell's get fails: its cluster was restarted
    assert "shut down" in cell.text() or "cancel" in cell.text().lower(), cell.text()


ACTOR_CELL = """
import time, distkernel as dk
@dk.remote
class Sleeper:
    def nap(self, seconds):
        time.sleep(seconds)
        return seconds
sleeper = Sleeper.options(name="sleeper").remote()
dk.get(sleeper.nap.remote(60))
"""


def test_killing_an_actor_from_the_panel_ends_the_call_a_cell_waits_for(kernel):
    panel = PanelLink(kernel, create_subshell(kernel))
    cell = kernel.run(ACTOR_CELL, wait=False)
    alive = panel.update_where(lambda u: u["cluster"] is not None and any(
        a["name"] == "sleeper" and a["state"] == "alive" for a in u["cluster"]["actors"]))
    (actor,) = [a for a in alive["cluster"]["actors"] if a["name"] == "sleeper"]
    assert actor["class"] == "Sleeper"
    reply = panel.reply(panel.act(action="kill_actor", actor_id=actor["id"]))
    assert reply["ok"], reply
    kernel.wait(cell, timeout=20)  # well before the call's 60 s
    assert "ActorDiedError" in cell.text(), cell.text()


MALFORMED = [
    ({"action": "launch"}, "unknown action 'launch'"),
    ({"action": "scale", "workers": "3"}, "'workers' must be a whole number"),
    ({"action": "scale", "workers": 0}, "'workers' must be a whole number"),
    ({"action": "cancel"}, "'task_id' must be a non-empty string"),
    ({"action": "cancel", "task_id": "nope"}, "not running or queued"),
    ({"action": "kill_actor", "actor_id": "nope"}, "there is no actor nope"),
]


def test_malformed_messages_get_an_error_reply(kernel):
    panel = PanelLink(kernel)
    for data, says in MALFORMED:
        reply = panel.reply(panel.act(**data))
        assert not reply["ok"], data
        assert says in reply["error"], (data, reply)
    panel.send_raw(["not", "an", "object"])
    panel.send_raw(None)
    assert panel.reply(panel.act(action="refresh"))["ok"]  # still answering
    check = kernel.run("print('alive')")
    assert "alive" in check.text() and "Traceback" not in check.text()
    assert "Traceback" not in "".join(m["content"].get("text", "") for m in kernel.stray)


def test_before_load_ext_the_kernel_closes_the_panels_comm():
    session = KernelSession("python3")
    try:
        panel = PanelLink(session)
        deadline = time.monotonic() + 10
        while not panel.closed() and time.monotonic() < deadline:
            session.collect(0.1)
        assert panel.closed()
        assert session.run("%load_ext distkernel").ok
        again = PanelLink(session)
        again.update_where(lambda u: u["cluster"] is not None)
    finally:
        session.shutdown()
