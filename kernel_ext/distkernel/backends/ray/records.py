"""The driver's book of the tasks it sent to Ray: their records, cells and output.

Each submission is recorded at once (name, kind, cell, time). A watcher thread takes the
tasks' ``Report`` s (``runner``), many at a time, and with each completes the record
(when and on which node it ran) and writes what the task printed under the cell that
submitted it, even after that cell ended. (A callback per task, ``ref.future()``, halved
Ray's submission rate.)

In the driver the reports come on the driver's channel (``report_channel``), keyed by
Ray's task id. A task that ends without one (its worker died, it was cancelled, an
argument of its failed) is ended from its result: the watcher looks which results are
in now and then, and at once for a task whose call raised (Ray may run it again).
Tasks submitted inside tasks report on the driver's channel too, and the worker that
submitted one sends a note naming its parent: the driver files it under the parent's
cell, also when it ends after its parent; once such a task is done in Ray, the worker that
submitted it (its owner, the one process that can look at its result) says so, and the
driver ends one that sent no report of its own. Through Ray Client each report is the task's
last return value instead, which the watcher fetches once it is in; so it is inside a
task whose driver has no channel, where the parent's report carries the records of the
tasks it submitted that had ended by then, and, for those still running, the Ray refs to
their report and results: the driver watches them from then on. (A parent that raised
hands those to a keeper, ``handover``, and its report says where to take them.)

The book also keeps, while a task is unfinished, a Ray ref to its results: what
``cancel_task`` and an interrupted cell cancel. A task submitted inside a task has none
here: the worker that submitted it is asked to cancel it, on its connection.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from distkernel.backends.base import CellSource, OutputHandler, print_output
from distkernel.backends.ray import handover
from distkernel.backends.ray.report_listener import ReportListener
from distkernel.backends.ray.runner import (
    CANCEL,
    ENDED,
    REPORT_ATTRIBUTE,
    Report,
    cancel_requests,
    note_ended,
)
from distkernel.core import config
from distkernel.core.bounded import BoundedDict
from distkernel.core.protocol import TaskKind
from distkernel.core.refs import new_id
from distkernel.core.timings import CellTimelines, TaskCells, TaskRecord, Timeline

#: Every WATCH_PERIOD seconds the watcher looks which of the oldest WATCH_BATCH are in.
WATCH_BATCH = 1000
WATCH_PERIOD = 0.05
#: How often the watcher looks whether a task whose report comes on the channel ended
#: without one (seconds).
RESULTS_PERIOD = 0.5
#: How many reports for tasks this book does not know (yet) it keeps: one may come before
#: its ``submitted`` (a short task), or after its record was ended from its result.
KEPT_UNKNOWN = 10_000
#: How long a report for a task this book does not know waits for it (seconds), before
#: its output is written as it is (to whichever cell runs then).
UNKNOWN_WAIT = 2.0

#: How often an idle watcher takes the channel's reports all the same (seconds): an actor
#: made here may report calls of other processes' (which this book does not know), and a
#: worker waits while the channel's buffer is full.
IDLE_LOOK = 1.0

#: How long the driver waits for the report of a task submitted inside a task once the
#: worker that submitted it said it is done (its report, sent before it returned, may
#: still be on its way from another node), before ending it without one (seconds).
ENDED_WAIT = 1.0
#: What the record of a task says that ended in Ray without a report or a cancel.
NO_RESULT = ("ended without a result of its own: its worker died, or an argument of it "
             "failed (getting its result raises why)")

#: What a watched Ray ref is: the report returned by a task, the result of a task whose
#: report comes on the channel (the driver's, or, in a task, ELSEWHERE: the driver is
#: told when it is in), or the result of an untraced call (no report at all).
REPORT, TRACED, ELSEWHERE, RESULT = "report", "traced", "elsewhere", "result"


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
    # One still running as its parent ended (status "pending"): Ray refs to its report (or
    # None: it returns none) and to its results, which the driver watches from then on.
    refs: tuple[Any, Any] | None = None


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

    def __init__(self, log_to_driver: bool, *, in_task: bool = False,
                 channel: ReportListener | None = None) -> None:
        self._lock = threading.Lock()
        self._log_to_driver = log_to_driver
        self.history = Timeline(config.TIMELINE_CAPACITY)
        self.cells = CellTimelines(2 * config.TIMELINE_CAPACITY)
        # id -> record, a Ray ref to its results, Ray's task id ("" unless its report
        # comes on the channel)
        self._unfinished: dict[str, tuple[TaskRecord, Any, str]] = {}
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
        self._kept: BoundedDict[str, list[NestedRecord]] = BoundedDict(KEPT_NESTED)
        # Ray ref -> (task id, what the ref is: REPORT, TRACED, ELSEWHERE or RESULT). A
        # result is fetched only for a task that ended without its report (an error, as a
        # rule).
        self._watched: dict[Any, tuple[str, str]] = {}
        # Those of them looked at every round (REPORT and RESULT), oldest first: the
        # others' reports come on the channel, and a round need not walk past them.
        self._often: dict[Any, None] = {}
        self._report_refs: dict[str, Any] = {}  # in a task: id -> the ref to its report
        # The channel's side: Ray's task id -> ours, while its report is awaited.
        self._channel = channel
        self._by_ray: dict[str, str] = {}
        self._raised: dict[str, Report] = {}  # id -> report of its last call that raised
        self._suspect: set[Any] = set()  # results to look at now (their call raised)
        # Ray's task id -> messages waiting for it to be known (its reports, the notes of
        # the tasks it submitted), each with when it came
        self._unknown: BoundedDict[str, list[tuple[Any, float]]] = BoundedDict(KEPT_UNKNOWN)
        # Ray's task id -> the record of an ended task whose report came on the channel, or
        # was awaited there: for a report that comes after all, or that says the task
        # failed after all (the record alone: one more object kept per task would make
        # Python's full garbage collections come sooner)
        self._ended_ray: BoundedDict[str, TaskRecord] = BoundedDict(KEPT_UNKNOWN)
        # Of tasks submitted inside tasks, by Ray's task id: which are done in Ray (when to
        # end them without a report, whether their submitter cancelled them), and whose
        # task submitted each
        self._ending: dict[str, tuple[float, bool]] = {}
        self._parent_of: BoundedDict[str, str] = BoundedDict(KEPT_UNKNOWN)
        self._cancelled: BoundedDict[str, None] = BoundedDict(KEPT_UNKNOWN)  # Ray ids cancelled
        self._owners: dict[str, int] = {}  # Ray's id -> the connection of the worker owning it
        self._reports_lock = threading.Lock()  # reports are handled in the order they came
        self._results_looked = 0.0
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
        index = self._nodes.get(node_id)  # a known node: one lookup, no lock (every report)
        if index is not None:
            return index
        with self._lock:
            return self._nodes.setdefault(node_id, len(self._nodes) + 1)

    def node_id(self, index: int) -> str | None:
        """The Ray node numbered ``index`` (see ``node_index``), if one is."""
        with self._lock:
            return next((node for node, i in self._nodes.items() if i == index), None)

    # -- a task's life ---------------------------------------------------------------------------

    def submitted(self, name: str, kind: TaskKind, results: Any, report: Any | None,
                  ray_task_id: str = "") -> str:
        """Record a task just handed to Ray: ``results`` is a Ray ref to (one of) its
        results; ``report`` the ref to its ``Report``, or ``ray_task_id`` its id in Ray
        when its report comes on the channel (neither: an untraced call, whose record ends
        when its result is in)."""
        source = self.tag_source
        task_id, record = self._record(name, kind, time.time(),
                                       source() if source is not None else None, True)
        early = None
        with self._lock:
            self._unfinished[task_id] = (record, results, ray_task_id)
            idle = not self._watched
            if report is not None:
                self._watch_ref(report, task_id, REPORT)
                if self._in_task:  # handed to the driver if it outlives its parent
                    self._report_refs[task_id] = report
            elif ray_task_id and self._channel is None:  # in a task: the driver is told
                self._watched[results] = (task_id, ELSEWHERE)
            elif ray_task_id:
                self._watched[results] = (task_id, TRACED)
                self._by_ray[ray_task_id] = task_id
                early = self._unknown.pop(ray_task_id, None) if self._unknown else None
            else:
                self._watch_ref(results, task_id, RESULT)
        if idle:  # the watcher sleeps until there is something to watch
            self._work.set()
        if early:  # a short task's report came before this record
            with self._reports_lock:
                self._handle([sent for sent, _ in early])
        return task_id

    def _record(self, name: str, kind: TaskKind, submitted: float, cell: str | None,
                opens: bool) -> tuple[str, TaskRecord]:
        """A new pending record, in the history and its cell's timeline."""
        task_id = new_id()
        record = TaskRecord(task_id, name, kind, None, submitted, None, None, "pending", 0, 0,
                            None)
        with self._lock:
            self.counts["submitted"] += 1
            if cell is not None:
                self._tags.remember(task_id, cell)
        self.history.add(record)
        if cell is not None:
            self.cells.add(cell, record, opens=opens)
        return task_id, record

    def _watch(self) -> None:
        """The watcher thread: end the records of tasks whose report (or result) is in.

        While tasks are in flight, every WATCH_PERIOD it takes the reports that came on
        the channel and looks, without waiting, which of the oldest WATCH_BATCH returned
        reports and untraced results are in (those whose report comes on the channel
        every RESULTS_PERIOD only, or at once when their call raised), and handles them;
        with none, it sleeps until a submission (with a channel, IDLE_LOOK at most): a
        bounded cost per round, whatever the number in flight, and no wake-up per task
        (waiting on them as they came in took the GIL from the caller at every task: a
        round trip cost 20 % more, submission half).
        """
        import ray

        while not self.closed:
            self._stop.wait(WATCH_PERIOD)
            now = time.monotonic()
            every = now - self._results_looked >= RESULTS_PERIOD
            if every:
                self._results_looked = now
            try:
                self._take_reports()
                if self._in_task:
                    self._take_requests()
                with self._lock:
                    refs = self._due(every)
                    if not (refs or self._watched or self._unknown or self._ending):
                        self._work.clear()
                if not refs:
                    if not self._work.is_set() and not self.closed:  # nothing in flight:
                        # sleep until a submission (without a channel, no timer at all)
                        self._work.wait(IDLE_LOOK if self._channel is not None else None)
                    continue
                if not ray.is_initialized():  # Ray shut down (at exit, before us): any call
                    return  # of its would start a new Ray
                self._end_ready(refs)
            except Exception:  # noqa: BLE001 - Ray shut down under us: nothing more to watch
                return

    def _due(self, every: bool) -> list[Any]:
        """The refs to look at this round (the lock held)."""
        refs = list(itertools.islice(self._watched if every else self._often, WATCH_BATCH))
        if self._suspect:
            refs.extend(self._suspect.difference(refs))
        return refs

    def _watch_ref(self, ref: Any, task_id: str, kind: str) -> None:
        """Look at ``ref`` until it is in (the lock held)."""
        self._watched[ref] = (task_id, kind)
        if kind in (REPORT, RESULT):
            self._often[ref] = None

    def _unwatch(self, ref: Any) -> tuple[str, str] | None:
        """Look at ``ref`` no more; what it was watched as (the lock held)."""
        self._often.pop(ref, None)
        return self._watched.pop(ref, None)

    def catch_up(self) -> None:
        """End now the records of the tasks that are done (for a timeline asked for right
        after a ``get``: the watcher may not have looked yet)."""
        if self.closed:
            return
        self._take_reports()
        with self._lock:
            refs = self._due(every=True)
        if refs:
            self._end_ready(refs)

    def _end_ready(self, refs: list[Any]) -> None:
        """Of ``refs`` (watched reports and results), end the records of those that are in,
        without waiting; each is ended once, whoever looks (the watcher or a caller)."""
        import ray

        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not ready:
            return
        self._take_reports()  # a report that came meanwhile ends its task here
        with self._lock:
            watched = [self._unwatch(ref) for ref in ready]
            self._suspect.difference_update(ready)
        reports = [ref for ref, w in zip(ready, watched) if w is not None and w[1] == REPORT]
        try:
            got = dict(zip(reports, ray.get(reports, timeout=10)))
        except Exception as exc:  # noqa: BLE001 - one failed: each on its own, in _ended_by
            exc.__traceback__ = None  # (its frames would hold the refs till a collection)
            got = {}
        for ref, entry in zip(ready, watched):
            if entry is None:
                continue
            task_id, kind = entry
            if kind in (RESULT, ELSEWHERE):
                self._ended(task_id, None, None)
            else:  # the report, its ref (when getting it may raise), or the result's ref
                self._ended_by(task_id, got.get(ref, ref), kind)

    def _ended_by(self, task_id: str, outcome: Any, kind: str) -> None:
        """End a task from its report (REPORT), or from its result, which came without a
        report on the channel (TRACED: an error, as a rule). ``outcome``: the report, or
        the Ray ref to get (which may raise)."""
        import ray

        error = None
        if isinstance(outcome, ray.ObjectRef):
            try:
                outcome = ray.get(outcome, timeout=10)
            except BaseException as exc:  # noqa: BLE001 - any failure ends the record
                exc.__traceback__ = None  # (its frames would hold the ref till a collection)
                outcome, error = None, exc
        if kind == TRACED:  # the output of a call that raised was written when it came
            with self._lock:
                raised = self._raised.get(task_id)
            self._ended(task_id, raised, error, deliver=False)
        else:
            report = outcome if isinstance(outcome, Report) else _report_of(error)
            self._ended(task_id, report, error)

    def _take_reports(self) -> None:
        """Handle the reports that came on the channel, in the order they came."""
        if self._channel is None:
            return
        with self._reports_lock:
            self._handle(self._channel.drain_from())
            if self._ending:
                self._end_unreported(time.monotonic())
            if self._unknown:
                self._write_unknown(time.monotonic() - UNKNOWN_WAIT)

    def _handle(self, messages: list[tuple[int, Any]]) -> None:
        """Messages from the channel, each with the number of the worker's connection it
        came on: ``(Ray's task id, True / False, report fields)``, a call's report (it
        returned, or raised); ``(Ray's task id, None, (parent's task id, name, kind,
        when))``, a task submitted inside a task; ``(Ray's task id, ENDED, (cancelled,))``,
        such a task is done in Ray. The reports lock held."""
        for sender, message in messages:
            try:
                ray_task_id, ok, fields = message
                if ok is None:
                    self._on_note(ray_task_id, *fields, sender=sender)
                elif ok == ENDED:
                    self._on_ended(ray_task_id, *fields, sender=sender)
                else:
                    self._on_report(ray_task_id, ok, Report(*fields), sender)
            except (TypeError, ValueError):  # not a message of this version's: skipped
                continue

    def _wait_for(self, ray_task_id: str, sender: int, message: Any) -> None:
        """Keep ``message`` until the task ``ray_task_id`` is known (the lock held)."""
        self._unknown.setdefault(ray_task_id, []).append(((sender, message),
                                                          time.monotonic()))

    def _on_note(self, ray_task_id: str, parent: str, name: str, kind: TaskKind,
                 submitted: float, *, sender: int, known: bool = False) -> None:
        """A task was submitted inside the task ``parent`` by the worker on the connection
        ``sender`` (its owner, who alone can cancel it): its record, under the parent's
        cell (``known``: file it even if the parent is not known, with no cell). The
        reports lock held."""
        with self._lock:
            parent_id = self._by_ray.get(parent)
            if parent_id is None and parent in self._ended_ray:
                parent_id = self._ended_ray[parent].task_id
            if parent_id is None and not known:  # the parent's own note is on its way
                self._wait_for(parent, sender,
                               (ray_task_id, None, (parent, name, kind, submitted)))
                return
        task_id, record = self._record(
            name, kind, submitted, self.cell_of(parent_id) if parent_id else None, False)
        with self._lock:
            self._unfinished[task_id] = (record, None, ray_task_id)
            self._by_ray[ray_task_id] = task_id
            self._parent_of[ray_task_id] = parent
            self._owners[ray_task_id] = sender
            early = self._unknown.pop(ray_task_id, None) if self._unknown else None
        if early:  # its report, or the notes of the tasks it submitted
            self._handle([sent for sent, _ in early])

    def _on_report(self, ray_task_id: str, ok: bool, report: Report, sender: int) -> None:
        """A call's report came on the channel (``ok``: it returned, else it raised and
        Ray may run it again). The reports lock held."""
        late = results = record = None
        with self._lock:
            task_id = self._by_ray.get(ray_task_id)
            if task_id is None:
                late = self._ended_ray.get(ray_task_id)
                if late is None:  # not submitted yet, or not by this book: kept a while
                    self._wait_for(ray_task_id, sender, (ray_task_id, ok, tuple(report)))
                    return
            else:
                entry = self._unfinished.get(task_id)
                record, results = entry[:2] if entry is not None else (None, None)
                if ok:
                    del self._by_ray[ray_task_id]
                    self._watched.pop(results, None)
                    self._suspect.discard(results)
                else:  # its result says whether it ended (and how) or runs again
                    self._raised[task_id] = report
                    if results is not None:
                        self._suspect.add(results)
        if late is not None and not ok:  # an attempt's report that came after the end
            if not report.runs_again:  # its result could not be sent after all
                self._failed_late(late, report)
            self._deliver(self._node_of(report), late.task_id, report)
        elif late is not None:  # its record was ended from its result: times and output now
            self._came_late(late.task_id, late, report)
        elif task_id is not None and not ok:
            self._deliver(self._node_of(report), task_id, report)
            if results is None and not report.runs_again:  # submitted in a task: no result
                self._ended(task_id, report, None, deliver=False, error_text=report.error,
                            cancelled=report.cancelled)
        elif task_id is not None:
            if report.actor_exit and results is not None:
                import ray  # the actor is ended once this call's result is stored

                ray.wait([results], timeout=10, fetch_local=False)
            if not self._ended(task_id, report, None) and record is not None:
                self._came_late(task_id, record, report)  # ended from its result meanwhile

    def _on_ended(self, ray_task_id: str, cancelled: bool, *, sender: int) -> None:
        """A task submitted inside a task is done in Ray (its submitter says): ended after
        ENDED_WAIT unless its report comes by then. The reports lock held."""
        with self._lock:
            if ray_task_id in self._by_ray:
                self._ending[ray_task_id] = (time.monotonic() + ENDED_WAIT, cancelled)
            elif ray_task_id not in self._ended_ray:  # its own note is on its way
                self._wait_for(ray_task_id, sender, (ray_task_id, ENDED, (cancelled,)))

    def _end_unreported(self, now: float) -> None:
        """End the tasks submitted inside tasks that are done in Ray and sent no report
        that said they returned: as their last attempt's report says, if one raised (Ray
        retried it to the end), else cancelled (here, by their submitter, or with a task
        above them), else failed without a result. The reports lock held."""
        with self._lock:
            due = [ray_task_id for ray_task_id, (at, _) in self._ending.items() if at <= now]
            ending = []
            for ray_task_id in due:
                cancelled = self._ending.pop(ray_task_id)[1] or \
                    self._cancelled_above(ray_task_id)
                task_id = self._by_ray.get(ray_task_id)
                if task_id is not None:  # else its report came meanwhile
                    ending.append((task_id, self._raised.get(task_id), cancelled))
        for task_id, raised, cancelled in ending:
            if raised is not None:
                self._ended(task_id, raised, None, deliver=False, error_text=raised.error,
                            cancelled=cancelled or raised.cancelled)
            else:
                self._ended(task_id, None, None, error_text="" if cancelled else NO_RESULT,
                            cancelled=cancelled)

    def _cancelled_above(self, ray_task_id: str | None) -> bool:
        """Whether this task, or one it was submitted inside, was cancelled here (Ray
        cancels the tasks a task submitted with it). The lock held."""
        for _ in range(len(self._parent_of) + 1):  # each step goes one task up
            if ray_task_id is None:
                return False
            if ray_task_id in self._cancelled:
                return True
            ray_task_id = self._parent_of.get(ray_task_id)
        return False

    def cancelling(self, results: list[Any]) -> None:
        """Tasks about to be cancelled (Ray refs to their results): those of them, and of
        the tasks submitted inside them, that end without a report are cancelled, not
        failed."""
        ray_task_ids = [ref.task_id().hex() for ref in results]
        with self._lock:
            self._mark_cancelled(ray_task_ids)

    def _mark_cancelled(self, ray_task_ids: list[str]) -> None:
        """(the lock held)"""
        for ray_task_id in ray_task_ids:
            self._cancelled[ray_task_id] = None

    def cancel_nested(self, *, cell: str | None = None, task_id: str | None = None,
                      force: bool = False) -> list[str]:
        """Cancel the unfinished tasks submitted inside tasks of ``cell`` (or the one
        ``task_id``): no ref to their results is at hand here, so the worker that
        submitted each, their owner, is asked to. Returns the ids of those asked."""
        if self._channel is None:  # through Ray Client: handed over, with their refs
            return []
        with self._lock:
            nested = [(each, ray_task_id, self._owners.get(ray_task_id))
                      for each, (_, results, ray_task_id) in self._unfinished.items()
                      if results is None and ray_task_id and
                      (each == task_id if task_id is not None else
                       self._tags.get(each) == cell)]
            self._mark_cancelled([ray_task_id for _, ray_task_id, _ in nested])
        return [each for each, ray_task_id, owner in nested if owner is not None and
                self._channel.tell(owner, (CANCEL, ray_task_id, force))]

    def _take_requests(self) -> None:
        """In a task: cancel the tasks submitted here that the driver asks to."""
        for request in cancel_requests():
            try:
                what, ray_task_id, force = request
            except (TypeError, ValueError):  # not a request of this version's: skipped
                continue
            if what != CANCEL:
                continue
            with self._lock:
                results = next((entry[1] for entry in self._unfinished.values()
                                if entry[2] == ray_task_id), None)
                self._mark_cancelled([ray_task_id])
            if results is not None:
                import ray

                try:
                    ray.cancel(results, force=force)
                except Exception:  # noqa: BLE001 - it ended meanwhile: nothing to cancel
                    pass

    def _failed_late(self, record: TaskRecord, report: Report) -> None:
        """A task whose report said it returned failed all the same: Ray could not send
        its result (``runner._Checked``)."""
        with self._lock:
            if record.status == "failed":
                return
            self.counts[record.status] -= 1
            self.counts["failed"] += 1
        record.error = report.error
        record.status = "failed"

    def _came_late(self, task_id: str, record: TaskRecord, report: Report) -> None:
        """A report for a task already ended from its result: what only the report says."""
        self._fill(record, report)
        if report.nested:
            self._file_nested(task_id, report.nested)
        self._deliver(record.worker_id or 0, task_id, report)

    def _fill(self, record: TaskRecord, report: Report) -> None:
        """Set what a report says of its task in the record (field by field: readers copy
        records, see timeline())."""
        record.started, record.finished = report.started, report.finished
        record.bytes_in, record.bytes_out = report.bytes_in, report.bytes_out
        record.worker_id = self.node_index(report.node_id) if report.node_id else None

    def _write_unknown(self, before: float) -> None:
        """Messages for tasks this book still does not know that came before ``before``:
        a report's output is written to whichever cell runs (no task of this book's sent
        it); a note's task is filed with no cell."""
        with self._lock:
            old = [ray_task_id for ray_task_id, waiting in self._unknown.items()
                   if waiting[-1][1] < before]
            taken = [message for ray_task_id in old
                     for message, _ in self._unknown.pop(ray_task_id)]
        for sender, (ray_task_id, ok, fields) in taken:
            if ok is None:
                self._on_note(ray_task_id, *fields, sender=sender, known=True)
            elif ok == ENDED:  # a task never known here: nothing to end
                continue
            else:
                report = Report(*fields)
                self._deliver(self._node_of(report), "", report)

    def _node_of(self, report: Report) -> int:
        return self.node_index(report.node_id) if report.node_id else 0

    def _ended(self, task_id: str, report: Report | None, error: BaseException | None,
               deliver: bool = True, error_text: str = "", cancelled: bool = False) -> bool:
        """The task ended: complete its record, deliver its output (``deliver``). It failed
        with ``error`` or, as its report says, ``error_text``, or it was ``cancelled``.
        In a task, one whose report goes to the driver is told the driver of, else kept
        for its parent's report. False if it had ended already."""
        with self._lock:
            entry = self._unfinished.pop(task_id, None)
            if entry is None:
                return False
            record, _, ray_task_id = entry
            self._raised.pop(task_id, None)
            if ray_task_id:  # for a report that comes after all, or says it failed after all
                self._by_ray.pop(ray_task_id, None)
                self._owners.pop(ray_task_id, None)
                self._ended_ray[ray_task_id] = record
            # (in a task, whose result it did not look at: cancelled here, as it seems)
            cancelled = cancelled or (self._in_task and ray_task_id in self._cancelled)
            status = "cancelled" if cancelled else "failed" if error_text else _status(error)
            self.counts[status] += 1
        if report is not None and report.handed_over:  # its children still running
            report = report._replace(nested=report.nested + _taken_over(report.handed_over))
        if report is not None:
            self._fill(record, report)
        else:
            record.finished = time.time()
            record.worker_id = None
        record.error = error_text or (None if error is None else _error_text(error))
        record.status = status  # type: ignore[assignment]
        if report is not None and report.actor_exit and self.on_actor_exit is not None:
            try:
                self.on_actor_exit(*report.actor_exit)
            except Exception:  # noqa: BLE001 - Ray shut down meanwhile: nothing left to end
                pass
        if self._in_task and ray_task_id:
            note_ended(ray_task_id, status == "cancelled")
            return True
        if self._in_task:
            with self._lock:
                self._report_refs.pop(task_id, None)
            self._keep(task_id, record, report)
            return True
        if report is not None and report.nested:
            self._file_nested(task_id, report.nested)
        if report is not None and deliver:
            self._deliver(record.worker_id or 0, task_id, report)
        return True

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

    def take_nested(self, task_ids: list[str], hand_over: bool) -> tuple[NestedRecord, ...]:
        """The records of these tasks (a call's children) that have ended, and of the tasks
        they submitted, taken out (a worker, as the call ends). With ``hand_over`` (the
        records travel in a result, whose Ray refs Ray tracks), those still running too,
        with the refs the driver watches them by (``NestedRecord.refs``)."""
        try:
            self.catch_up()
        except Exception:  # noqa: BLE001 - Ray unavailable: what was kept is still sent
            pass
        with self._lock:
            taken = [self._kept.pop(t) if t in self._kept else
                     self._hand_over(t) if hand_over else [] for t in task_ids]
        return tuple(record for each in taken for record in each)

    def _hand_over(self, task_id: str) -> list[NestedRecord]:
        """A running child, taken out of this book for its parent's report (the lock
        held)."""
        entry = self._unfinished.pop(task_id, None)
        if entry is None:  # gone from the kept ones (the oldest go)
            return []
        record, results, _ = entry
        report = self._report_refs.pop(task_id, None)
        self._unwatch(report if report is not None else results)
        return [NestedRecord(record.name, record.kind, record.submitted, None, None,
                             "pending", 0, 0, None, "", "", "", (report, results))]

    def _file_nested(self, parent_id: str, nested: tuple[NestedRecord, ...]) -> None:
        """The driver: tasks a task submitted, filed as records of the parent's cell, their
        output delivered there."""
        cell = self.cell_of(parent_id)
        for each in nested:
            if each.refs is not None:  # still running: watched here from now on
                self._watch_handed_over(each, cell)
                continue
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

    def _watch_handed_over(self, nested: NestedRecord, cell: str | None) -> None:
        """A task submitted inside a task that ended first: recorded under that task's
        cell, and ended as an unfinished task of this book's is (by its report, or by its
        result for a call that returns none)."""
        report, results = nested.refs  # type: ignore[misc]
        task_id, record = self._record(nested.name, nested.kind, nested.submitted, cell, False)
        with self._lock:
            self._unfinished[task_id] = (record, results, "")
            if report is not None:
                self._watch_ref(report, task_id, REPORT)
            else:
                self._watch_ref(results, task_id, RESULT)
        self._work.set()

    def _deliver(self, node: int, task_id: str, report: Report) -> None:
        if not self._log_to_driver or self.closed:
            return
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
                    if entry[1] is not None and self._tags.get(task_id) == cell]

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
        if self._channel is not None:
            with self._reports_lock:
                self._channel.close()
        with self._lock:
            unfinished = [results for _, results, _ in self._unfinished.values()
                          if results is not None]  # not those submitted in tasks
            self._unfinished.clear()
            self._watched.clear()
            self._often.clear()
        return unfinished


def _taken_over(handed_over: str) -> tuple[NestedRecord, ...]:
    """The records of running children a call that raised handed over (``handover``)."""
    try:
        return handover.take(handed_over)
    except Exception:  # noqa: BLE001 - no keeper (its driver's connection ended): none
        return ()


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

