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

_CHUNK = 1 << 16  # below malloc's mmap threshold: a bigger read buffer costs an mmap per read


def header(size: int) -> bytes:
    """Connection's frame header for a payload of ``size`` bytes."""
    if size > 0x7FFFFFFF:
        return b"\xff\xff\xff\xff" + size.to_bytes(8, "big")
    return size.to_bytes(4, "big")


class FrameReader:
    """Frames from one end of a socketpair whose other end is a Connection."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def read(self) -> list[bytes]:
        """One read (blocking if nothing has arrived); the complete frames it finished.

        Raises EOFError when the other end is closed.
        """
        data = os.read(self._fd, _CHUNK)
        if not data:
            raise EOFError
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        end = len(buffer)
        while end - start >= 4:
            size = int.from_bytes(buffer[start:start + 4], "big", signed=True)
            head = 4
            if size == -1:
                if end - start < 12:
                    break
                size = int.from_bytes(buffer[start + 4:start + 12], "big")
                head = 12
            if end - start < head + size:
                break
            frames.append(bytes(buffer[start + head:start + head + size]))
            start += head + size
        if start:
            del buffer[:start]
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
        parts = [header(len(payload)), payload]
        with self._cond:
            if self._closed:
                raise BrokenPipeError
            if not self._pending:
                try:
                    sent = self._sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(parts[0]) + len(payload):
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
