"""Pieces of the Ray driver scripts of these tests: what every one ends with (after
shutdown, no process that the script started is left: Ray's services, its workers, a
cluster's nodes), and what those that look at cells' records and output start with."""

NOTHING_LEFT = """
import time as _time
import psutil as _psutil

_deadline = _time.monotonic() + 30
while _psutil.Process().children(recursive=True) and _time.monotonic() < _deadline:
    _time.sleep(0.2)
_left = [p.name() for p in _psutil.Process().children(recursive=True)]
assert not _left, f"still running after shutdown: {_left}"
"""


#: Task output filed by cell, as the notebook front does: ``follow_cells(engine)`` routes
#: it into ``written`` as ``(node, cell, stream, text)``, the cell being that of the task
#: that wrote it (``cell[0]`` is the cell running now); ``settled(tag, count)`` waits for
#: a cell's records to have ended (a moment after the results), ``output_of(tag, count)``
#: for its output, sorted; ``all_cancelled(refs)`` checks that each of those tasks was
#: cancelled (an interrupted cell's).
CELLS = """
import threading as _threading
import time as _time

written, lock, cell = [], _threading.Lock(), ["In [1]"]

def follow_cells(engine):
    def write(node, task_id, stream, text):
        with lock:
            written.append((node, engine.cell_of_task(task_id), stream, text))
    engine.route_output(lambda: cell[0], write)

def settled(tag, count):
    deadline = _time.monotonic() + 30
    while True:
        records = engine.timeline(cell=tag)
        if len(records) >= count and all(r.status != "pending" for r in records):
            return records
        assert _time.monotonic() < deadline, records
        _time.sleep(0.05)

def output_of(tag, count):
    deadline = _time.monotonic() + 30
    while True:
        with lock:
            out = sorted(text for _, cell_tag, _, text in written if cell_tag == tag)
        if len(out) >= count or _time.monotonic() > deadline:
            return out
        _time.sleep(0.05)

def all_cancelled(refs):
    for ref in refs:
        try:
            dk.get(ref, timeout=20)
        except dk.TaskCancelledError:
            pass
        else:
            raise AssertionError("a task that was cancelled went on")
"""
