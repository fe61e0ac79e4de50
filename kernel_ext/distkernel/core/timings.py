"""Task records (SPEC §6) and the bounded history ``timeline()`` reads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from distkernel.core.bounded import BoundedDict
from distkernel.core.protocol import TaskKind

TaskStatus = Literal["pending", "running", "finished", "failed", "cancelled"]


@dataclass(slots=True)
class TaskRecord:
    """When and where one task ran; times are epoch seconds."""

    task_id: str
    name: str
    kind: TaskKind
    worker_id: int | None
    submitted: float
    started: float | None
    finished: float | None
    status: TaskStatus
    bytes_in: int
    bytes_out: int
    error: str | None

    def copy(self) -> TaskRecord:
        """A copy the engine no longer updates (4x quicker than ``copy.copy`` here)."""
        return TaskRecord(self.task_id, self.name, self.kind, self.worker_id, self.submitted,
                          self.started, self.finished, self.status, self.bytes_in,
                          self.bytes_out, self.error)

    @property
    def queue_time(self) -> float | None:
        return None if self.started is None else self.started - self.submitted

    @property
    def run_time(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class Timeline:
    """The last ``capacity`` records, oldest first; appended from the engine's threads."""

    def __init__(self, capacity: int) -> None:
        self._records: deque[TaskRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, record: TaskRecord) -> None:
        with self._lock:
            self._records.append(record)

    def extend(self, records: Iterable[TaskRecord]) -> None:
        with self._lock:
            self._records.extend(records)

    def last(self, count: int | None = None) -> list[TaskRecord]:
        with self._lock:
            return _newest(self._records, count)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class TaskCells:
    """Which notebook cell each of the latest ``capacity`` tasks came from (its tag): where
    its output goes and what an interrupted cell cancels. Not locked: the engine's lock
    guards it."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._cells: BoundedDict[str, str] = BoundedDict(capacity)

    def remember(self, task_id: str, cell: str) -> None:
        self._cells[task_id] = cell

    def get(self, task_id: str) -> str | None:
        return self._cells.get(task_id)

    def tasks_of(self, cell: str) -> list[str]:
        return [task_id for task_id, tag in self._cells.items() if tag == cell]


class CellTimelines:
    """The records of recent notebook cells' tasks, by cell tag: what a cell's timings
    show, also when a late task ends after the cell did.

    Bounded by ``max_records`` in all: the oldest cells are forgotten first. Only a
    task the cell itself submitted opens a cell's entry; its children join it.
    """

    def __init__(self, max_records: int) -> None:
        self._cells: dict[str, deque[TaskRecord]] = {}
        self._max_records = max_records
        self._count = 0
        self._lock = threading.Lock()

    def add(self, cell: str, record: TaskRecord, *, opens: bool) -> None:
        with self._lock:
            records = self._cells.get(cell)
            if records is None:
                if not opens:
                    return
                records = self._cells[cell] = deque(maxlen=self._max_records)
            if len(records) < self._max_records:
                self._count += 1
            records.append(record)
            while self._count > self._max_records and len(self._cells) > 1:
                oldest = next(iter(self._cells))
                self._count -= len(self._cells.pop(oldest))

    def of(self, cell: str, count: int | None = None) -> list[TaskRecord]:
        """The cell's records, oldest first (all kept, or the newest ``count``)."""
        with self._lock:
            return _newest(self._cells.get(cell, ()), count)

    def clear(self) -> None:
        with self._lock:
            self._cells.clear()
            self._count = 0


def _newest(records: Iterable[TaskRecord], count: int | None) -> list[TaskRecord]:
    kept = list(records)
    return kept if count is None else kept[-count:] if count > 0 else []
