"""Short tasks of one function, submitted in a loop, run in batches: one scheduler entry,
one message to the worker and one back for about a millisecond of them.

A loop of ``f.remote(i)`` over a function known to be short (the scheduler's prefetch
depth says so) is cut, as it is registered, into batches of consecutive calls with the
same function, options and cell::

    scheduler:  batch B (one task, one CPU, seqs s .. s+n-1)
    worker:     RunBatch(s, members) -> member i runs as run s+i -> BatchDone(s, ends, last)
    driver:     each member's results, record and cell are its own

Each member is still a task of its own to the user: its ObjectRefs, its record, its
output, ``cancel`` (a mark on its own seq; a queued batch just drops it), and a crash
blames only the member that was running (the worker publishes its run in the control
block); the others run again without using a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from distkernel.core.protocol import InlineValue, TaskSpec
from distkernel.core.refs import new_id

#: Appended to a function's hash to time its batches apart from its single runs.
BATCH_KEY = "+batch"
#: Tasks in one batch, at most: half the runs a worker may hold of the function.
MAX_BATCH = 16
_NO_ARGUMENTS = InlineValue(b"")


@dataclass(slots=True)
class Batch:
    """The tasks behind one batch entry of the scheduler."""

    spec: TaskSpec  # the scheduler's entry (never sent)
    cell: str | None
    pending: dict[str, TaskSpec]  # member task id -> spec: not ended yet, in order
    sent: tuple[TaskSpec, ...] = ()  # the members of its run now; member i is run seq + i
    seq: int = 0  # its run now (0: not sent)
    ran: float = 0.0  # seconds its members that finished took, in all
    ran_count: int = 0

    def member_seqs(self, *, pending_only: bool) -> list[int]:
        """The seqs of the members of its run now."""
        return [self.seq + index for index, member in enumerate(self.sent)
                if not pending_only or member.task_id in self.pending]

    def member_at(self, seq: int) -> TaskSpec | None:
        """The member that runs as ``seq`` in its run now, if any."""
        index = seq - self.seq
        return self.sent[index] if self.seq and 0 <= index < len(self.sent) else None


@dataclass
class Batches:
    """Every batch not over yet, by task id, by member and by its run's seq."""

    by_id: dict[str, Batch] = field(default_factory=dict)
    of_member: dict[str, str] = field(default_factory=dict)  # member task id -> batch id
    by_seq: dict[int, Batch] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def of(self, member_id: str) -> Batch | None:
        batch_id = self.of_member.get(member_id)
        return self.by_id.get(batch_id) if batch_id is not None else None

    def sent(self, batch: Batch, seq: int) -> tuple[TaskSpec, ...]:
        """The batch goes out as run ``seq``, with the members still pending."""
        if batch.seq:
            self.by_seq.pop(batch.seq, None)
        batch.seq, batch.sent = seq, tuple(batch.pending.values())
        self.by_seq[seq] = batch
        return batch.sent

    def member_ended(self, batch: Batch, member_id: str) -> TaskSpec | None:
        """Take a member off its batch (None: it had ended already)."""
        self.of_member.pop(member_id, None)
        return batch.pending.pop(member_id, None)

    def over(self, batch: Batch) -> None:
        """Forget a batch whose run is over; members still pending are the caller's."""
        self.by_id.pop(batch.spec.task_id, None)
        if self.by_seq.get(batch.seq) is batch:
            del self.by_seq[batch.seq]
        for member_id in batch.pending:
            self.of_member.pop(member_id, None)

    def clear(self) -> None:
        self.by_id.clear()
        self.of_member.clear()
        self.by_seq.clear()


class Grouper:
    """Cuts tasks registered together into batches (see the module's docstring).

    ``add`` each plain task in submission order, then ``specs`` is what the scheduler
    gets (single tasks and batch entries, in order) and ``sizes`` the batches' sizes.
    """

    def __init__(self, batches: Batches, depth_of: Callable[[str], int]) -> None:
        self._batches = batches
        self._depth_of = depth_of
        self.specs: list[TaskSpec] = []
        self.sizes: dict[str, int] = {}
        self._open: list[TaskSpec] = []
        self._open_key: tuple[object, ...] | None = None
        self._open_cell: str | None = None
        self._limit = 0

    def add(self, spec: TaskSpec, cell: str | None) -> None:
        key = (spec.function_hash, spec.name, spec.max_retries, cell)
        if key != self._open_key or len(self._open) >= self._limit:
            self._close()
            limit = self._batch_size(spec)
            if limit < 2:
                self.specs.append(spec)
                return
            self._open_key, self._open_cell, self._limit = key, cell, limit
        self._open.append(spec)

    def finish(self) -> None:
        self._close()

    def _batch_size(self, spec: TaskSpec) -> int:
        if spec.kind != "task" or spec.retry_exceptions:
            return 1  # cells run alone; a retried exception needs a run of its own
        return min(MAX_BATCH, self._depth_of(spec.function_hash) // 2)

    def _close(self) -> None:
        members, self._open, self._open_key = self._open, [], None
        if len(members) == 1:
            self.specs.append(members[0])
        elif members:
            first = members[0]
            spec = TaskSpec(new_id(), first.name, "task", first.function_hash + BATCH_KEY,
                            _NO_ARGUMENTS, (), (), first.max_retries)
            batch = Batch(spec, self._open_cell, {m.task_id: m for m in members})
            self._batches.by_id[spec.task_id] = batch
            for member in members:
                self._batches.of_member[member.task_id] = spec.task_id
            self.specs.append(spec)
            self.sizes[spec.task_id] = len(members)
