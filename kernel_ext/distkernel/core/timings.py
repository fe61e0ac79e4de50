"""Task records (SPEC §6) and the bounded history ``timeline()`` reads."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

TaskStatus = Literal["pending", "running", "finished", "failed", "cancelled"]


@dataclass(slots=True)
class TaskRecord:
    """When and where one task ran; times are epoch seconds."""

    task_id: str
    name: str
    kind: str
    worker_id: int | None
    submitted: float
    started: float | None
    finished: float | None
    status: TaskStatus
    bytes_in: int
    bytes_out: int
    error: str | None

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

    def last(self, count: int | None = None) -> list[TaskRecord]:
        with self._lock:
            records = list(self._records)
        return records if count is None else records[-count:] if count > 0 else []

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
