"""A real JupyterLab (on 127.0.0.1, a free port, a token) and Debian's Chromium driven by
Playwright. The server is shared by a module's tests; every test ends with its kernels
shut down, so the leak check finds no worker of theirs."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_until

CHROMIUM = os.environ.get("DISTKERNEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """One running JupyterLab server and what a test needs of it."""

    def __init__(self, root: Path, home: Path, log: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        env = dict(os.environ,
                   JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   IPYTHONDIR=str(home / "ipython"))
        news = home / "settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True)
        (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        command = [sys.executable, "-m", "jupyterlab", "--no-browser",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={root}", "--allow-root",
                   "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(log, "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait_until(self._up, timeout=60, interval=0.2):
            self.stop()
            pytest.fail(f"JupyterLab did not start; its log:\n{log.read_text()[-3000:]}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def _up(self) -> bool:
        if self.process.poll() is not None:
            return True  # exited: reported by the caller's check of the status
        try:
            return self.api("status") is not None
        except OSError:
            return False

    def stop_kernels(self) -> None:
        """Shut every kernel down (their workers and segments go with them)."""
        for kernel in self.api("kernels"):  # type: ignore[union-attr]
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_root")
    home = tmp_path_factory.mktemp("lab_home")
    lab = Lab(root, home, tmp_path_factory.mktemp("lab_log") / "lab.log")
    yield lab
    lab.stop()


@pytest.fixture
def lab(lab_server):
    """The shared server; the test's kernels are shut down when it ends."""
    yield lab_server
    lab_server.stop_kernels()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `./run tests` installs it (apt-get install "
                    f"chromium), or set DISTKERNEL_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    xdg = tmp_path_factory.mktemp("chromium_xdg")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            env={**os.environ, "XDG_CONFIG_HOME": str(xdg / "config"),
                 "XDG_CACHE_HOME": str(xdg / "cache")})
        yield launched
        launched.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    opened.on("console", lambda message: message.type == "error" and print(
        f"[browser console] {message.text}"))
    opened.on("pageerror", lambda error: print(f"[browser page error] {error}"))
    yield opened
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"))
    finally:
        context.close()


def write_notebook(path: Path, cells: list[str], kernel: str) -> None:
    """A notebook of code cells on ``kernel`` (a kernelspec name)."""
    names = {"distkernel": "Python 3 (distkernel)", "python3": "Python 3 (ipykernel)"}
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}",
                   "metadata": {}, "outputs": [], "source": source}
                  for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"name": kernel, "display_name": names[kernel],
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))

