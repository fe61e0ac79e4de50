"""Installing the "Python 3 (distkernel)" kernelspec for this Python.

The wheel already ships the spec in ``share/jupyter/kernels/distkernel`` (so
installing the package is enough inside one environment); this command writes
one whose ``argv`` names this interpreter by its full path, for a Jupyter that
lives elsewhere (``--user``) or for another prefix.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "distkernel"
DISPLAY_NAME = "Python 3 (distkernel)"


def spec(python: str = sys.executable) -> dict[str, object]:
    return {"argv": [python, "-m", "distkernel.front.kernel", "-f", "{connection_file}"],
            "display_name": DISPLAY_NAME, "language": "python", "interrupt_mode": "signal",
            "metadata": {"debugger": True}}


def install(*, user: bool = False, prefix: str | None = None) -> str:
    """Install the kernelspec; returns the directory it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "kernel.json").write_text(json.dumps(spec(), indent=2))
        return KernelSpecManager().install_kernel_spec(folder, KERNEL_NAME, user=user,
                                                       prefix=prefix)
