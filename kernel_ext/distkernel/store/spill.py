"""Spilling: objects nobody is reading move from shared memory to files on disk.

When the store is full, or its shared-memory folder is, the engine picks the
least recently used objects that no process has mapped and moves each to a
file of its own, freeing its arena region::

    arena chunk (tmpfs) ── sendfile ──▶ <spill dir>/distkernel-<pid>-<token>-spill-<random>/<n>
                          ◀── sendfile ── (get, when the store has room again)

A spilled object is still readable where it is: driver and workers map its
file read-only, zero-copy from the page cache, just as they map the arena.
``get`` brings it back into memory when that fits without spilling another.
The folder is private (mode 0700, a random name, made on first use) and goes
with the cluster, also when the driver is killed (see ``reaper``). A disk
limit bounds it: ``DISTKERNEL_SPILL_LIMIT`` bytes if set, and never past the
point where the disk would have less than ``SPILL_DISK_RESERVE`` of it free.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable

from distkernel.core import config
from distkernel.core.protocol import Place, SharedValue
from distkernel.store.reaper import Space

_ATTEMPTS = 20


class Spiller:
    """The driver's spill folder; called under the engine's lock."""

    def __init__(self, space: Space, remove: Callable[[str], None]) -> None:
        self._space = space
        self._remove = remove  # unlinks a file off the caller's thread
        self._folder: str | None = None
        self._names = itertools.count(1)
        self.limit = config.spill_limit()

    @property
    def folder(self) -> str | None:
        return self._folder

    def has_room(self, nbytes: int, spilled_now: int) -> bool:
        """Whether ``nbytes`` more may go to disk."""
        if self.limit is not None and spilled_now + nbytes > self.limit:
            return False
        try:
            disk = shutil.disk_usage(self._folder or self._space.spill_base)
        except OSError:
            return False
        return disk.free - nbytes >= disk.total * config.SPILL_DISK_RESERVE

    def refusal(self, nbytes: int, spilled_now: int) -> str:
        """Why ``nbytes`` cannot be spilled, for the store-full message."""
        if self.limit == 0:
            return "Spilling to disk is off (DISTKERNEL_SPILL_LIMIT=0)."
        if self.limit is not None and spilled_now + nbytes > self.limit:
            return (f"The spill limit is reached ({config.format_bytes(spilled_now)} of "
                    f"DISTKERNEL_SPILL_LIMIT={config.format_bytes(self.limit)} spilled).")
        return (f"The disk under {self._space.spill_base} is nearly full; set "
                f"DISTKERNEL_SPILL_DIR to a folder on a larger disk.")

    def spill(self, source: str, value: SharedValue) -> SharedValue | None:
        """Copy a value from its arena chunk (``source``) to a new file; None if the disk
        refuses (full), in which case nothing changed."""
        path = os.path.join(self._make_folder(), f"{next(self._names):x}")
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _copy(source_fd, out, value.offset, value.size)
            finally:
                os.close(source_fd)
        except OSError:
            os.close(out)
            os.unlink(path)
            return None
        os.close(out)
        return SharedValue(path, value.size, value.header_len, value.buffers, value.contained,
                           value.is_error, 0, spilled=True)

    def restore(self, value: SharedValue, target: str, place: Place) -> SharedValue:
        """Copy a spilled value back into an arena region (``target`` is its chunk)."""
        source_fd = os.open(value.segment, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.lseek(out, place.offset, os.SEEK_SET)
                _copy(source_fd, out, 0, value.size)
            finally:
                os.close(out)
        finally:
            os.close(source_fd)
        return SharedValue(place.segment, value.size, value.header_len, value.buffers,
                           value.contained, value.is_error, place.offset)

    def discard(self, value: SharedValue) -> None:
        self._remove(value.segment)

    def close(self) -> None:
        """Remove the folder and whatever is left in it (shutdown)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _make_folder(self) -> str:
        if self._folder is None:
            for _ in range(_ATTEMPTS):
                candidate = self._space.spill_dir_candidate()
                try:
                    os.mkdir(candidate, 0o700)
                except FileExistsError:
                    continue
                self._folder = candidate
                break
            else:
                msg = f"could not make a spill folder in {self._space.spill_base}"
                raise FileExistsError(msg)
        return self._folder


def _copy(source: int, target: int, offset: int, count: int) -> None:
    """``count`` bytes from ``source`` at ``offset`` to ``target`` at its position, in
    the kernel (no copy through this process)."""
    while count:
        sent = os.sendfile(target, source, offset, count)
        if not sent:
            msg = "the source file ended early"
            raise OSError(msg)
        offset += sent
        count -= sent
