"""The local engine's memory: the store's table, the arena, spilling, and regions lent out.

::

    put / large argument (driver) ──┐                     ┌── get: view of an object
    allocate (worker, a Request) ───┼─▶ allocate(size) ───┤   (arena region, or its
                                    │   reserve capacity  │    spilled file, read in place)
                                    │   region in arena   │
                                    │   full? spill the least recently used objects
                                    │   nobody reads, give back free chunks, retry
                                    └─▶ ObjectStoreFullError only when even that fails

Every method runs with the engine's lock held. Nothing here blocks on another
process; bulk copies happen outside the lock, except spilling and restoring
(file to file, in the kernel), which happen when memory is short.
"""

from __future__ import annotations

import errno
import functools
import shutil
from collections import deque
from collections.abc import Callable, Iterable

from distkernel.backends.local.regions import Borrowed, Lent, Sent
from distkernel.core import config
from distkernel.core.protocol import InlineValue, Place, SharedValue, Value
from distkernel.store import object_store
from distkernel.store.arena import Arena, Region
from distkernel.store.object_store import ObjectStore, Reclaimer
from distkernel.store.reaper import Space
from distkernel.store.spill import Spiller


class Memory:
    """Objects in memory and on disk, for one cluster (lock held by the caller)."""

    def __init__(self, space: Space, capacity: int,
                 on_view_closed: Callable[[], None]) -> None:
        self.space = space
        self.reclaimer = Reclaimer()
        self.arena = Arena(space, capacity, self._remove_chunk)
        self.spiller = Spiller(space, self.reclaimer.remove)
        self.store = ObjectStore(capacity, self._free_shared)
        self.lent = Lent()
        self.sent = Sent(self.arena.hold, self.arena.release)
        self.views: Borrowed[tuple[str, int]] = Borrowed()  # arena views workers report open
        self.views_closed: deque[tuple[str, int]] = deque()  # driver views gone (finalizers)
        self._on_view_closed = on_view_closed  # asks whoever can take the lock to apply them

    # -- room --------------------------------------------------------------------------------

    def allocate(self, size: int) -> Place:
        """Reserve ``size`` bytes of capacity and an arena region for them.

        When the store or the shared-memory folder is full, objects nobody reads are
        spilled to disk first; raises ObjectStoreFullError when even that cannot help.
        """
        self.reserve(size)
        try:
            region = self._region(size)
        except BaseException:
            self.store.release(size)
            raise
        return Place(region.chunk, region.offset, size)

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` against the capacity, spilling to make room if needed."""
        refusal = self._make_room(nbytes)
        if not self.store.fits(nbytes):
            raise self.store.full_error(nbytes, refusal)
        self.store.reserve(nbytes)

    def force_reserve(self, nbytes: int) -> None:
        """Count a small value that must be stored (an error to report) even when full."""
        self.store.used += nbytes

    def give_back(self, place: Place) -> None:
        """Room allocated but not used after all."""
        self.arena.release(place.segment, place.offset)
        self.store.release(place.size)

    def _region(self, size: int) -> Region:
        while True:
            try:
                return self.arena.allocate(size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            # The shared-memory folder is full: free a region by spilling and try again;
            # when nothing more can be spilled, give wholly free chunks back at once.
            if self._spill_one() is None and not self.arena.trim():
                raise self.store.full_error(size, self._shm_advice()) from None

    def _make_room(self, nbytes: int) -> str:
        """Spill until ``nbytes`` fit; returns why spilling stopped short (or "")."""
        while not self.store.fits(nbytes):
            if self._spill_one() is None:
                return self._refusal(nbytes)
        return ""

    def _spill_one(self) -> str | None:
        """Spill the least recently used object nobody reads; its id, or None."""
        for object_id in self.store.resident():
            entry = self.store.entry(object_id)
            value = entry.value if entry is not None else None
            if entry is None or not isinstance(value, SharedValue) or value.spilled:
                continue
            if entry.view is not None:  # the driver's own mapping: let it go if unused
                entry.view = None
                self.apply_closed_views()
            if self.arena.holders(value.segment, value.offset) != 1:
                continue  # mapped somewhere (a task, a get result): it stays
            if not self.spiller.has_room(value.size, self.store.spilled):
                return None
            spilled = self.spiller.spill(self.space.segment_path(value.segment), value)
            if spilled is None:
                return None
            self.store.swap_value(object_id, spilled)
            self.arena.release(value.segment, value.offset)
            return object_id
        return None

    def _refusal(self, nbytes: int) -> str:
        if nbytes > self.store.capacity:
            return ""  # no spilling can help: the advice is a larger store
        if self.spiller.has_room(nbytes, self.store.spilled):
            return ("Every object in memory is in use (mapped by a task, or by an array "
                    "get() returned that is still alive), so none could be spilled to disk. "
                    "Delete arrays and ObjectRefs you no longer need, or start with a larger "
                    "store: init(object_store_memory=...).")
        return self.spiller.refusal(nbytes, self.store.spilled)

    def _shm_advice(self) -> str:
        free = _free_bytes(self.space.shm_dir)
        return (f"The shared-memory folder {self.space.shm_dir} has only "
                f"{config.format_bytes(free)} free (other programs or kernels use the rest), "
                f"and nothing more could be spilled to disk. Free memory there, give it more "
                f"room (docker run --shm-size=2g), or point DISTKERNEL_SHM_DIR at a larger "
                f"tmpfs.")

    # -- values from workers -------------------------------------------------------------------

    def accept(self, worker_id: int, value: Value) -> Value | None:
        """Take a value a worker wrote (lock held): counted against the capacity, or None
        when it is not acceptable (names room that was not lent to this worker)."""
        if type(value) is InlineValue:
            nbytes = value.nbytes
            if self.store.fits(nbytes):  # nearly always: no spilling to think of
                self.store.used += nbytes
            else:
                self.reserve(nbytes)
            return value
        if isinstance(value, SharedValue):
            return value if self.lent.take(worker_id, value) else None
        return None

    def views_reported(self, worker_id: int, opened: Iterable[tuple[str, int]],
                       closed: Iterable[tuple[str, int]]) -> None:
        """A worker's views of arena regions: each open one holds its region."""
        for segment, offset in opened:
            self.arena.hold(segment, offset)
            self.views.add(worker_id, (segment, offset))
        for segment, offset in closed:
            self.arena.release(segment, offset)
            self.views.add(worker_id, (segment, offset), -1)

    def worker_gone(self, worker_id: int) -> None:
        """Give back what a worker that exited was writing or reading."""
        for place in self.lent.worker_gone(worker_id):
            self.give_back(place)
        self.sent.worker_gone(worker_id)
        for (segment, offset), count in self.views.worker_gone(worker_id).items():
            for _ in range(count):
                self.arena.release(segment, offset)

    # -- reading -------------------------------------------------------------------------------

    def view(self, object_id: str) -> memoryview | None:
        """The driver's read-only mapping of a stored value, made once and cached.

        An arena mapping holds its region, and lets go (through its finalizer) once the
        store has dropped it and no array made from it is left; a spilled value is read
        from its file.
        """
        entry = self.store.entry(object_id)
        if entry is None or not isinstance(entry.value, SharedValue):
            return None
        if entry.view is None:
            value = entry.value
            if value.spilled:
                entry.view = object_store.map_readonly(value.segment, value)
            else:
                self.arena.hold(value.segment, value.offset)
                closed = functools.partial(self._view_closed, value.segment, value.offset)
                entry.view = object_store.map_readonly(self.space.segment_path(value.segment),
                                                       value, closed)
        self.store.touch(object_id)
        return entry.view

    def restore(self, object_id: str) -> None:
        """Bring a spilled object back into the arena when it fits without spilling another."""
        entry = self.store.entry(object_id)
        value = entry.value if entry is not None else None
        if not (isinstance(value, SharedValue) and value.spilled and
                self.store.fits(value.size)):
            return
        try:
            place = self.allocate(value.size)
        except (MemoryError, OSError):
            return  # no room after all: it is read from its file
        try:
            restored = self.spiller.restore(value, self.space.segment_path(place.segment),
                                            place)
        except OSError:
            self.give_back(place)
            return
        self.store.swap_value(object_id, restored)
        self.spiller.discard(value)

    def _view_closed(self, segment: str, offset: int) -> None:
        """Finalizer of a driver-side arena view: any thread, maybe inside a GC pass."""
        self.views_closed.append((segment, offset))
        self._on_view_closed()

    def apply_closed_views(self) -> None:
        closed = self.views_closed
        while closed:
            self.arena.release(*closed.popleft())

    # -- the end -------------------------------------------------------------------------------

    def _free_shared(self, value: SharedValue) -> None:
        if value.spilled:
            self.spiller.discard(value)
        else:
            self.arena.release(value.segment, value.offset)

    def _remove_chunk(self, name: str) -> None:
        self.reclaimer.remove(self.space.segment_path(name))

    def close(self) -> None:
        """Free everything (shutdown); mappings already handed out stay valid."""
        self.store.clear()
        self.arena.close()
        self.reclaimer.close()
        self.spiller.close()


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0
