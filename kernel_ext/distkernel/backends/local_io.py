"""The local engine's I/O thread: one blocking ``select`` over every worker.

::

    selector ── wake-up pipe ........ new workers to watch, or quit
             ├─ worker socketpair ... frames -> EngineCore.handle (lock held)
             └─ worker pidfd ........ the process exited -> EngineCore.on_exit

It never sleeps in a loop: it blocks until a worker writes, exits, or another
thread wakes it. Task output is handed to the output handler after the lock
is released, so printing never holds up scheduling.
"""

from __future__ import annotations

import os
import pickle
import selectors
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any

from distkernel.pool import WorkerProcess
from distkernel.protocol import Output

if TYPE_CHECKING:
    from distkernel.backends.local_core import EngineCore


class IOLoop:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", 0))
        self._to_watch: list[WorkerProcess] = []
        self._quit = False
        self._thread = threading.Thread(target=self._run, name="distkernel-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, process: WorkerProcess) -> None:
        """Start watching a new worker (any thread, lock held)."""
        self._to_watch.append(process)
        self._wake()

    def unwatch(self, process: WorkerProcess) -> None:
        """Stop watching (I/O thread, lock held)."""
        for fd in (process.conn.fileno(), process.sentinel):
            if fd is None:
                continue
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def stop(self, timeout: float) -> None:
        self._quit = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def _run(self) -> None:
        core = self._core
        while True:
            events = self._selector.select()
            outputs: list[tuple[int, Output]] = []
            with core.lock:
                if self._quit:
                    return
                core.drain()
                for key, _ in events:
                    self._guarded(self._on_event, key.data, outputs)
            for worker_id, output in outputs:
                self._guarded(core.output_handler, worker_id, output.task_id, output.stream,
                              output.text)

    def _on_event(self, data: tuple[str, int], outputs: list[tuple[int, Output]]) -> None:
        kind, worker_id = data
        if kind == "wake":
            self._on_wake()
        elif kind == "conn":
            self._read(worker_id, outputs)
        else:
            self._core.on_exit(worker_id)

    @staticmethod
    def _guarded(action: Any, *args: Any) -> None:
        """A bug in handling one event must not end the thread every get() waits on."""
        try:
            action(*args)
        except Exception:  # noqa: BLE001 - reported, then the loop goes on
            print("distkernel: internal error in the I/O thread (please report it):",
                  file=sys.__stderr__)
            traceback.print_exc(file=sys.__stderr__)

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        for process in self._to_watch:
            if process.closed:
                continue
            self._selector.register(process.conn.fileno(), selectors.EVENT_READ,
                                    ("conn", process.worker_id))
            if process.sentinel is not None:
                self._selector.register(process.sentinel, selectors.EVENT_READ,
                                        ("exit", process.worker_id))
        self._to_watch.clear()

    def _read(self, worker_id: int, outputs: list[tuple[int, Output]]) -> None:
        process = self._core.workers.get(worker_id)
        if process is None or process.closed:
            return
        try:
            frames = process.reader.read()
        except (EOFError, OSError):
            self._core.on_exit(worker_id)
            return
        for frame in frames:
            message = pickle.loads(frame)
            if isinstance(message, Output):
                outputs.append((worker_id, message))
            else:
                self._core.handle(worker_id, message)
