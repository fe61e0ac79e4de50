"""The driver's book of the tasks it sent to Ray: their records, cells and output.

Each submission is recorded at once (name, kind, cell, time). A watcher thread waits
(``ray.wait``) for the tasks' ``Report`` s (``runner``), many at a time, and with each
completes the record (when and on which node it ran) and writes what the task printed
under the cell that submitted it, even after that cell ended. (A callback per task,
``ref.future()``, halved Ray's submission rate.) The book also keeps, while a task is
unfinished, a Ray ref to its results: what ``cancel_task`` and an interrupted cell cancel.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from distkernel.backends.base import CellSource, OutputHandler, print_output
from distkernel.backends.ray.runner import REPORT_ATTRIBUTE, Report
from distkernel.core import config
from distkernel.core.protocol import TaskKind
from distkernel.core.refs import new_id
from distkernel.core.timings import CellTimelines, TaskCells, TaskRecord, Timeline

#: Every WATCH_PERIOD seconds the watcher looks which of the oldest WATCH_BATCH are in.
WATCH_BATCH = 1000
WATCH_PERIOD = 0.05


class NestedRecord(NamedTuple):
    """A task submitted inside a task, as its parent's report carries it to the driver."""

    name: str
    kind: TaskKind
    submitted: float
    started: float | None
    finished: float | None
    status: str
    bytes_in: int
    bytes_out: int
    error: str | None
    node_id: str
    stdout: str
    stderr: str


#: How many ended tasks a worker keeps for parents' reports (those whose parent ended
#: first are never taken: the oldest go).
KEPT_NESTED = 10_000


class TaskBook:
    """Records, cells and output of the tasks this process sent to Ray (thread-safe).

    In the driver, an ended task's output goes to the output handler. In a Ray worker
    (``in_task``), where tasks submit tasks, it is kept with the record instead, for the
    report of the call that submitted it (``take_nested``): the driver then files both
    under that call's cell.
    """

    def __init__(self, log_to_driver: bool, *, in_task: bool = False) -> None:
        self._lock = threading.Lock()
        self._log_to_driver = log_to_driver
        self.history = Timeline(config.TIMELINE_CAPACITY)
        self.cells = CellTimelines(2 * config.TIMELINE_CAPACITY)
        self._unfinished: dict[str, tuple[TaskRecord, Any]] = {}  # id -> record, a Ray ref
        self._tags = TaskCells()
        self._nodes: dict[str, int] = {}  # Ray node id -> its index here (1, 2, ...)
        self.counts: Counter[str] = Counter()
        self.tag_source: CellSource | None = None
        self.output_handler: OutputHandler = print_output
        # Called with (Ray's actor id, why) when a call's report says exit_actor() ended
        # its actor: the engine ends the actor for good, its result being stored by then.
        self.on_actor_exit: Callable[[str, str], None] | None = None
        self.closed = False
        self._in_task = in_task
        self._kept: OrderedDict[str, list[NestedRecord]] = OrderedDict()
        # Ray ref of a task's report -> its id; or of its result (an untraced call), which
        # is never fetched: it may be large, and its readiness is all the record needs.
        self._watched: dict[Any, tuple[str, bool]] = {}
        self._stop = threading.Event()
        self._work = threading.Event()  # set when there is something to watch, or to stop
        self._watcher = threading.Thread(target=self._watch, name="distkernel-ray-records",
                                         daemon=True)
        self._watcher.start()

    def route_output(self, current_cell: CellSource | None, write: OutputHandler) -> None:
        with self._lock:
            self.tag_source = current_cell
            self.output_handler = write

    def node_index(self, node_id: str) -> int:
        """A short number for a Ray node (what ``worker_id`` means on Ray), first come first."""
        with self._lock:
            return self._nodes.setdefault(node_id, len(self._nodes) + 1)

    def node_id(self, index: int) -> str | None:
        """The Ray node numbered ``index`` (see ``node_index``), if one is."""
        with self._lock:
            return next((node for node, i in self._nodes.items() if i == index), None)

    # -- a task's life ---------------------------------------------------------------------------

    def submitted(self, name: str, kind: TaskKind, results: Any, report: Any | None) -> str:
        """Record a task just handed to Ray: ``results`` is a Ray ref to (one of) its
        results, ``report`` the ref to its ``Report`` (None: an untraced call, whose
        record ends when its result is in)."""
        task_id = new_id()
        source = self.tag_source
        cell = source() if source is not None else None
        record = TaskRecord(task_id, name, kind, None, time.time(), None, None, "pending", 0, 0,
                            None)
        with self._lock:
            self._unfinished[task_id] = (record, results)
            self.counts["submitted"] += 1
            if cell is not None:
                self._tags.remember(task_id, cell)
        self.history.add(record)
        if cell is not None:
            self.cells.add(cell, record, opens=True)
        with self._lock:
            idle = not self._watched
            if report is not None:
                self._watched[report] = (task_id, True)
            else:
                self._watched[results] = (task_id, False)
        if idle:  # the watcher sleeps until there is something to watch
            self._work.set()
        return task_id

    def _watch(self) -> None:
        """The watcher thread: end the records of tasks whose report (or result) is in.

        While tasks are in flight, every WATCH_PERIOD it looks, without waiting, which of
        the oldest WATCH_BATCH are in, and handles those (with none, it sleeps until a
        submission): a bounded cost per round, whatever the number in
        flight, and no wake-up per task (waiting on them as they came in took the GIL
        from the caller at every task: a round trip cost 20 % more, submission half).
        """
        import ray

        while not self.closed:
            self._stop.wait(WATCH_PERIOD)
            with self._lock:
                refs = list(itertools.islice(self._watched, WATCH_BATCH))
                if not refs:
                    self._work.clear()
            if not refs:  # nothing in flight: sleep until a submission (no polling)
                if not self.closed:  # close() sets closed, then _work: never missed
                    self._work.wait()
                continue
            if not ray.is_initialized():  # Ray shut down (at exit, before us): any call of
                return  # its would start a new Ray
            try:
                self._end_ready(refs)
            except Exception:  # noqa: BLE001 - Ray shut down under us: nothing more to watch
                return

    def catch_up(self) -> None:
        """End now the records of the tasks that are done (for a timeline asked for right
        after a ``get``: the watcher may not have looked yet)."""
        with self._lock:
            refs = list(itertools.islice(self._watched, WATCH_BATCH))
        if refs and not self.closed:
            self._end_ready(refs)

    def _end_ready(self, refs: list[Any]) -> None:
        """Of ``refs`` (watched reports and results), end the records of those that are in,
        without waiting; each is ended once, whoever looks (the watcher or a caller)."""
        import ray

        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if ready:
            with self._lock:
                watched = [self._watched.pop(ref, None) for ref in ready]
            reports = [ref for ref, w in zip(ready, watched) if w is not None and w[1]]
            try:
                got = dict(zip(reports, ray.get(reports, timeout=10)))
            except Exception:  # noqa: BLE001 - one failed: each on its own, in _ended
                got = {}
            for ref, entry in zip(ready, watched):
                if entry is not None:
                    task_id, is_report = entry
                    self._ended(task_id, got.get(ref, ref) if is_report else None)

    def _ended(self, task_id: str, outcome: Any) -> None:
        """The task's report (or result) is in: complete its record, deliver its output.
        ``outcome``: the report, or its Ray ref when getting it may raise, or None for an
        untraced call."""
        import ray

        error = None
        if isinstance(outcome, ray.ObjectRef):
            try:
                outcome = ray.get(outcome, timeout=10)
            except BaseException as exc:  # noqa: BLE001 - any failure ends the record
                outcome, error = None, exc
        report = outcome if isinstance(outcome, Report) else _report_of(error)
        with self._lock:
            entry = self._unfinished.pop(task_id, None)
            if entry is None:
                return
            record = entry[0]
            status = _status(error)
            self.counts[status] += 1
        node = self.node_index(report.node_id) if report is not None and report.node_id else None
        # The record's fields are set one by one; readers copy records (timeline()).
        if report is not None:
            record.started, record.finished = report.started, report.finished
            record.bytes_in, record.bytes_out = report.bytes_in, report.bytes_out
        else:
            record.finished = time.time()
        record.worker_id = node
        record.error = None if error is None else _error_text(error)
        record.status = status  # type: ignore[assignment]
        if report is not None and report.actor_exit and self.on_actor_exit is not None:
            try:
                self.on_actor_exit(*report.actor_exit)
            except Exception:  # noqa: BLE001 - Ray shut down meanwhile: nothing left to end
                pass
        if self._in_task:
            self._keep(task_id, record, report)
            return
        if report is not None and report.nested:
            self._file_nested(task_id, report.nested)
        if report is not None and self._log_to_driver and not self.closed:
            self._deliver(node or 0, task_id, report)

    def _keep(self, task_id: str, record: TaskRecord, report: Report | None) -> None:
        """In a worker: the ended task, with its output and its own nested ones, for its
        parent's report."""
        ended = NestedRecord(
            record.name, record.kind, record.submitted, record.started, record.finished,
            record.status, record.bytes_in, record.bytes_out, record.error,
            report.node_id if report is not None else "",
            report.stdout if report is not None else "",
            report.stderr if report is not None else "")
        with self._lock:
            self._kept[task_id] = [ended, *(report.nested if report is not None else ())]
            while len(self._kept) > KEPT_NESTED:
                self._kept.popitem(last=False)

    def take_nested(self, task_ids: list[str]) -> tuple[NestedRecord, ...]:
        """The records of these tasks (a call's children) that have ended, and of the tasks
        they submitted, taken out (a worker, as the call ends)."""
        try:
            self.catch_up()
        except Exception:  # noqa: BLE001 - Ray unavailable: what was kept is still sent
            pass
        with self._lock:
            taken = [self._kept.pop(t, []) for t in task_ids]
        return tuple(record for each in taken for record in each)

    def _file_nested(self, parent_id: str, nested: tuple[NestedRecord, ...]) -> None:
        """The driver: tasks a task submitted, filed as records of the parent's cell, their
        output delivered there."""
        cell = self.cell_of(parent_id)
        for each in nested:
            task_id = new_id()
            node = self.node_index(each.node_id) if each.node_id else None
            record = TaskRecord(task_id, each.name, each.kind, node, each.submitted,
                                each.started, each.finished, each.status,  # type: ignore[arg-type]
                                each.bytes_in, each.bytes_out, each.error)
            with self._lock:
                self.counts["submitted"] += 1
                self.counts[each.status] += 1
                if cell is not None:
                    self._tags.remember(task_id, cell)
            self.history.add(record)
            if cell is not None:
                self.cells.add(cell, record, opens=False)
            if self._log_to_driver and not self.closed:
                for stream, text in (("stdout", each.stdout), ("stderr", each.stderr)):
                    if text:
                        self._write(node or 0, task_id, stream, text)

    def _deliver(self, node: int, task_id: str, report: Report) -> None:
        for stream, text in (("stdout", report.stdout), ("stderr", report.stderr)):
            if text:
                self._write(node, task_id, stream, text)

    def _write(self, node: int, task_id: str, stream: str, text: str) -> None:
        try:
            self.output_handler(node, task_id, stream, text)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a broken handler must not stop Ray's thread
            pass

    # -- what the front asks -----------------------------------------------------------------

    def cell_of(self, task_id: str) -> str | None:
        with self._lock:
            return self._tags.get(task_id)

    def unfinished(self, task_id: str) -> Any | None:
        """A Ray ref to the results of an unfinished task (to cancel it), else None."""
        with self._lock:
            entry = self._unfinished.get(task_id)
        return entry[1] if entry is not None else None

    def unfinished_of_cell(self, cell: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(task_id, entry[1]) for task_id, entry in self._unfinished.items()
                    if self._tags.get(task_id) == cell]

    def running_count(self) -> int:
        with self._lock:
            return len(self._unfinished)

    def timeline(self, last: int | None, cell: str | None) -> list[TaskRecord]:
        records = self.history.last(last) if cell is None else self.cells.of(cell, last)
        return [record.copy() for record in records]

    def close(self) -> list[Any]:
        """Shut down (before Ray does): the watcher ends, no more output is written.
        Returns the Ray refs of the tasks still unfinished."""
        self.closed = True
        self._stop.set()
        self._work.set()
        self._watcher.join(timeout=5)
        with self._lock:
            unfinished = [results for _, results in self._unfinished.values()]
            self._unfinished.clear()
            self._watched.clear()
        return unfinished


def _report_of(error: BaseException | None) -> Report | None:
    cause = getattr(error, "cause", None)
    report = getattr(cause, REPORT_ATTRIBUTE, None)
    return report if isinstance(report, Report) else None


def _status(error: BaseException | None) -> str:
    if error is None:
        return "finished"
    from ray import exceptions as ray_errors

    return "cancelled" if isinstance(error, ray_errors.TaskCancelledError) else "failed"


def _error_text(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(error).__name__}: {error}".splitlines()[0]

