"""``multiprocess`` Connection frames: read in bulk, sent without ever blocking.

``Connection.recv_bytes`` costs a poll and two reads per message. Here one
``read`` takes whatever has arrived (often several messages), and the frames
are cut out of it. The format is Connection's: a 4-byte big-endian signed
length, or -1 then an 8-byte length for frames over 2 GiB, then the payload.

The driver sends with its lock held, and a busy worker reads its socket only
when it needs a message, so a driver send must never wait for the socket to
drain: ``Outbox`` writes what fits now and leaves the rest to a helper thread::

    driver thread ── send() ── MSG_DONTWAIT write ──▶ socket ──▶ worker
                        └── socket full: queue ── flusher thread (blocking writes, in order)
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Sequence

_CHUNK = 1 << 16  # the read buffer's first size; it grows for larger frames


def header(size: int) -> bytes:
    """Connection's frame header for a payload of ``size`` bytes."""
    if size > 0x7FFFFFFF:
        return b"\xff\xff\xff\xff" + size.to_bytes(8, "big")
    return size.to_bytes(4, "big")


def write_frame(fd: int, payload: bytes) -> None:
    """Send one frame on a blocking descriptor, all of it (a worker's sends).

    ``Connection.send_bytes`` costs about twice as much in Python around the
    same write; this runs for every result a worker sends.
    """
    parts = [header(len(payload)), payload]
    written = os.writev(fd, parts)
    total = len(parts[0]) + len(payload)
    if written < total:  # the socket was full: finish what is left, in order
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]


class FrameReader:
    """Frames from one end of a socketpair whose other end is a Connection.

    Reads go straight into one reused buffer (``readv``), so a small message
    costs no allocation but its own bytes; a frame larger than the buffer
    grows it.
    """

    def __init__(self, fd: int, size: int = _CHUNK) -> None:
        self._fd = fd
        self._buffer = bytearray(size)
        self._start = 0  # unparsed bytes are buffer[start:end]
        self._end = 0

    def read(self) -> list[bytes]:
        """One read (blocking if nothing has arrived); the complete frames it finished.

        Raises EOFError when the other end is closed.
        """
        self._make_room()
        view = memoryview(self._buffer)
        count = os.readv(self._fd, [view[self._end:]])
        view.release()
        if not count:
            raise EOFError
        self._end += count
        return self._cut_frames()

    def _make_room(self) -> None:
        """Move what is left to the front; grow when a frame will not fit."""
        buffer, start, end = self._buffer, self._start, self._end
        if start == end:
            self._start = self._end = 0
        elif start:
            buffer[:end - start] = buffer[start:end]
            self._start, self._end = 0, end - start
        needed = self._frame_size()[1]
        if needed > len(buffer) or self._end == len(buffer):
            buffer.extend(bytes(max(needed, 2 * len(buffer)) - len(buffer)))

    def _frame_size(self) -> tuple[int, int]:
        """(header, total) size of the frame at the front once its header is in, else (0, 0)."""
        available = self._end - self._start
        if available < 4:
            return 0, 0
        size = int.from_bytes(self._buffer[self._start:self._start + 4], "big", signed=True)
        if size != -1:
            return 4, 4 + size
        if available < 12:
            return 0, 0
        return 12, 12 + int.from_bytes(self._buffer[self._start + 4:self._start + 12], "big")

    def _cut_frames(self) -> list[bytes]:
        frames = []
        with memoryview(self._buffer) as view:  # slicing a bytearray would copy twice
            while True:
                head, total = self._frame_size()
                if not total or self._end - self._start < total:
                    break
                frames.append(bytes(view[self._start + head:self._start + total]))
                self._start += total
        return frames


class Outbox:
    """Frames to one socket, in order; ``send`` never blocks (any thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock  # blocking; MSG_DONTWAIT makes single writes non-blocking
        self._pending: deque[memoryview] = deque()  # the head may be half sent
        self._cond = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None
        self._closed = False

    def send(self, payload: bytes) -> None:
        """Send one frame now, or queue it behind those the socket could not take yet.

        Raises OSError if the other end is gone (noticed now or by an earlier flush).
        """
        self.send_many((payload,))

    def send_many(self, payloads: Sequence[bytes]) -> None:
        """Several frames in one write (one system call, one wake-up of the reader)."""
        parts: list[bytes] = []
        for payload in payloads:
            parts += (header(len(payload)), payload)
        with self._cond:
            if self._closed:
                raise BrokenPipeError
            if not self._pending:
                try:
                    sent = self._sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == sum(len(part) for part in parts):
                    return
            else:
                sent = 0
            self._pending.append(memoryview(b"".join(parts))[sent:])
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever,
                                                 name="distkernel-outbox", daemon=True)
                self._flusher.start()
            self._cond.notify()

    def _flush_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                head = self._pending[0]  # stays queued, so send() keeps the order
            try:
                self._sock.sendall(head)
            except OSError:  # the worker is gone; the driver learns it from its exit
                with self._cond:
                    self._closed = True
                    self._pending.clear()
                return
            with self._cond:
                if self._closed:  # close() emptied the queue while we were sending
                    return
                self._pending.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify()
        self._sock.close()
