"""A worker's ``sys.stdout`` / ``sys.stderr``: what a task prints goes to the driver.

Text is sent a line at a time (or when flushed), tagged with the running task,
and the driver shows it under the notebook cell that submitted the task. The
streams behave like the real ones as far as tasks look: ``.buffer`` takes bytes
(decoded as UTF-8), ``close()`` only flushes (a task that closes ``sys.stdout``
must not silence every later task), and ``fileno()`` says there is none.
"""

from __future__ import annotations

import codecs
import io
import threading
from collections.abc import Callable

Send = Callable[[str, str], None]  # (stream name, text)


class DriverStream(io.TextIOBase):
    """Text written here goes to the driver, one message per line or flush."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, send: Send, name: str) -> None:
        super().__init__()
        self._send = send
        self._stream = name
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self.buffer = DriverBinaryStream(self)

    @property
    def name(self) -> str:
        return f"<{self._stream}>"

    @property
    def line_buffering(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            msg = f"write() argument must be str, not {type(text).__name__}"
            raise TypeError(msg)
        with self._lock:
            self._pending.append(text)
        if "\n" in text:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if not self._pending:  # after every run: most print nothing
            return
        with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending = []
        self._send(self._stream, text)

    def close(self) -> None:
        """Flush only: the stream belongs to the worker, not to one task."""
        self.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class DriverBinaryStream(io.RawIOBase):
    """``sys.stdout.buffer``: bytes decoded as UTF-8 (bad bytes replaced), then sent as text."""

    def __init__(self, text: DriverStream) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        decoded = self._decoder.decode(view.tobytes())
        if decoded:
            self._text.write(decoded)
        return view.nbytes

    def flush(self) -> None:
        self._text.flush()

    def close(self) -> None:
        self.flush()

    def writable(self) -> bool:
        return True
