"""Installing the package installs and enables the side panel in JupyterLab."""

from __future__ import annotations

import subprocess
import sys


def test_jupyter_lists_the_panel_enabled():
    listed = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                            capture_output=True, text=True, timeout=60)
    lines = [line for line in (listed.stdout + listed.stderr).splitlines()
             if "distkernel-panel" in line]
    assert lines, listed.stdout + listed.stderr
    assert "enabled" in lines[0] and "OK" in lines[0] and "(python, distkernel)" in lines[0]
