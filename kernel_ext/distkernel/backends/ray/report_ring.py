"""A ring of bytes in shared memory, one writer (a Ray worker) and one reader (its driver),
for the reports of a worker on the driver's machine.

A report sent on a socket cost the worker one system call per call it ran, and with
Ray's own work between two calls that call found the kernel's caches cold: about 28 µs
of a worker's time per call, a quarter of all our front costs. Written here, a report is
a copy into memory the driver maps too; the driver reads the ring when it looks for
reports (every 50 ms, and right after a ``get``), so no one is woken per report.

    worker                         memfd (sealed)                       driver
    put(frame) ──► [written at][read at][ data ..................... ] ──► take()
                    its own     the driver's

The worker makes the memory (``memfd_create``: it has no name, so nothing is left behind
when both processes close it), seals its size, and hands its descriptor to the driver with
the first bytes it sends on its socket. Positions only grow; a position modulo the
capacity is a place in the data. The writer copies a frame in, then moves ``written at``
past it; the reader copies out what lies between ``read at`` and ``written at``, then
moves ``read at``. That order is enough on x86-64, whose stores are seen in the order
they were made and whose aligned 8-byte stores are whole: other machines, and systems
without ``memfd_create``, send on the socket (``available``).

Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import sys

#: Bytes of report data a ring holds: about 4,000 reports of a call with little output,
#: taken every 50 ms. Its pages are touched only as they are written.
CAPACITY = 1 << 20

_POSITION = struct.Struct("<Q")
_WRITTEN_AT = 0          # the writer's position: its own cache line
_READ_AT = 64            # the reader's
_DATA_AT = 128

#: What the driver checks before it maps a worker's ring: its size can no longer change
#: (a shrunk mapping would crash the driver when read).
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")


def available() -> bool:
    """Whether rings can be used here (see the module's docstring)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64") \
            or not hasattr(os, "memfd_create"):
        return False
    import fcntl

    return all(hasattr(fcntl, name) for name in _SEALS)


def _file_size(capacity: int) -> int:
    return _DATA_AT + capacity


class RingWriter:
    """The worker's end; ``descriptor`` is handed to the driver, then closed."""

    def __init__(self, capacity: int | None = None) -> None:
        import fcntl

        capacity = CAPACITY if capacity is None else capacity
        if capacity <= 0 or capacity & (capacity - 1):
            msg = f"a ring's capacity must be a power of two, got {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self.descriptor = os.memfd_create("distkernel-reports", os.MFD_CLOEXEC |
                                          os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.descriptor, _file_size(capacity))
            seals = 0
            for name in _SEALS:
                seals |= getattr(fcntl, name)
            fcntl.fcntl(self.descriptor, fcntl.F_ADD_SEALS, seals)
            self._memory = mmap.mmap(self.descriptor, _file_size(capacity))
        except OSError:
            os.close(self.descriptor)
            raise
        self._written = 0

    def put(self, frame: bytes) -> bool:
        """Copy ``frame`` in whole; False (nothing written) if there is no room for it now."""
        size, written, memory, capacity = len(frame), self._written, self._memory, self.capacity
        if size > capacity - (written - _POSITION.unpack_from(memory, _READ_AT)[0]):
            return False
        start = _DATA_AT + (written & (capacity - 1))
        first = _DATA_AT + capacity - start  # room before the end
        if size <= first:
            memory[start:start + size] = frame
        else:  # the frame goes round the end
            memory[start:] = frame[:first]
            memory[_DATA_AT:_DATA_AT + size - first] = frame[first:]
        self._written = written = written + size
        _POSITION.pack_into(memory, _WRITTEN_AT, written)  # now the reader may see it
        return True

    def close(self) -> None:
        self._memory.close()


class RingReader:
    """The driver's end, over a descriptor a worker handed it (closed here once mapped)."""

    def __init__(self, descriptor: int) -> None:
        """Raises ValueError for memory that is not a sealed ring."""
        import fcntl

        try:
            seals = fcntl.fcntl(descriptor, fcntl.F_GET_SEALS)
            wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
            size = os.fstat(descriptor).st_size
            capacity = size - _DATA_AT
            if seals & wanted != wanted or capacity <= 0 or capacity & (capacity - 1):
                msg = "a worker's report ring is not sealed or not of a ring's size"
                raise ValueError(msg)
            self._memory = mmap.mmap(descriptor, size)
        except OSError as exc:
            msg = f"a worker's report ring cannot be mapped: {exc}"
            raise ValueError(msg) from exc
        finally:
            os.close(descriptor)
        self.capacity = capacity
        self._read = 0

    def take(self) -> bytes:
        """All that was written since the last take (whole frames, as they were put).

        Raises ValueError if the writer's position makes no sense (the ring is then
        useless, and the worker is dropped)."""
        memory = self._memory
        written = _POSITION.unpack_from(memory, _WRITTEN_AT)[0]
        size = written - self._read
        if size == 0:
            return b""
        if not 0 < size <= self.capacity:
            msg = "a worker's report ring is corrupt"
            raise ValueError(msg)
        start = self._read & (self.capacity - 1)
        end = start + size
        data = memory[_DATA_AT + start:_DATA_AT + min(end, self.capacity)]
        if end > self.capacity:
            data += memory[_DATA_AT:_DATA_AT + end - self.capacity]
        self._read = written
        _POSITION.pack_into(memory, _READ_AT, written)  # copied out: the writer may reuse it
        return data

    def close(self) -> None:
        self._memory.close()
