"""The "Python 3 (distkernel)" kernel: IPython with distkernel loaded and the pool started.

    python -m distkernel.kernel -f CONNECTION_FILE

Only one hook changes: after the shell exists, the extension is loaded, which
starts the local cluster in the background and installs the magics, timings,
output routing and interrupt handling (see ``extension``). Restart and
shutdown stop the workers through the engine's exit handler, and a killed
kernel's workers notice their driver is gone and clean up.
"""

from __future__ import annotations

from typing import Any

from ipykernel.ipkernel import IPythonKernel

from distkernel import __version__


class DistkernelKernel(IPythonKernel):
    implementation = "distkernel"
    implementation_version = __version__

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert self.shell is not None  # made by IPythonKernel.__init__
        self.shell.extension_manager.load_extension("distkernel")

    def do_shutdown(self, restart: bool) -> Any:
        """Stop the pool first, so no worker is busy (or restarted) while the kernel exits."""
        from distkernel.api import runtime

        runtime.shutdown()
        return super().do_shutdown(restart)


def main() -> None:
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=DistkernelKernel)


if __name__ == "__main__":
    main()
