"""Reading ``multiprocess`` Connection frames in bulk.

``Connection.recv_bytes`` costs a poll and two reads per message. Here one
``read`` takes whatever has arrived (often several messages), and the frames
are cut out of it. The format is Connection's: a 4-byte big-endian signed
length, or -1 then an 8-byte length for frames over 2 GiB, then the payload.
"""

from __future__ import annotations

import os

_CHUNK = 1 << 16  # below malloc's mmap threshold: a bigger read buffer costs an mmap per read


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
            header = 4
            if size == -1:
                if end - start < 12:
                    break
                size = int.from_bytes(buffer[start + 4:start + 12], "big")
                header = 12
            if end - start < header + size:
                break
            frames.append(bytes(buffer[start + header:start + header + size]))
            start += header + size
        if start:
            del buffer[:start]
        return frames
