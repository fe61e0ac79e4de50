"""The Ray engine, in driver scripts of their own (Ray changes the process it runs in),
each on a real Ray started by init(address="ray") or joined to the module's cluster
(conftest.py): the API's calls and errors as on the local engine, and nothing left
running after shutdown()."""

from __future__ import annotations

import importlib.util

import pytest

from tests.backends.ray.scripts import CELLS, NOTHING_LEFT
from tests.conftest import run_driver_script

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'distkernel[ray]')")

SCRIPT = """
import os
import tempfile
import time
import numpy as np
import ray
import distkernel as dk

info = dk.init(address="ray", num_cpus=2)
assert info.backend == "ray", info
status = dk.status()
assert status["backend"] == "ray" and status["num_workers"] == 2, status

@dk.remote
def square(x):
    return x * x

@dk.remote(num_returns=2)
def pair(x):
    return x, -x

@dk.remote
def total(arr):
    return float(arr.sum())

@dk.remote
def fail(kind):
    raise ValueError(f"bad {kind}")

@dk.remote
def nap(seconds, started=None):
    if started:
        with open(started, "w") as file:
            file.write(str(os.getpid()))
    for _ in range(max(1, int(seconds * 100))):   # Ray interrupts a task between bytecodes,
        time.sleep(0.01)                          # not inside one long sleep
    return seconds

assert dk.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]
a, b = pair.remote(3)
assert dk.get([a, b]) == [3, -3]
arr = np.arange(1_000_000, dtype=np.float64)
stored = dk.put(arr)
assert dk.get(total.remote(stored)) == float(arr.sum())   # a ref as argument
assert np.array_equal(dk.get(stored), arr)

ready, not_ready = dk.wait([nap.remote(0.01), nap.remote(5)], num_returns=1, timeout=3)
assert len(ready) == 1 and len(not_ready) == 1
dk.cancel(not_ready[0])   # its CPU is free for what follows

try:
    dk.get(fail.remote("input"))
except ValueError as error:   # the original class ...
    assert isinstance(error, dk.TaskError), type(error)   # ... and ours
    assert "bad input" in str(error) and "fail" in error.remote_traceback
else:
    raise AssertionError("no error")

napping = nap.remote(5)
try:
    dk.get(napping, timeout=0.2)
except dk.GetTimeoutError:
    dk.cancel(napping)
else:
    raise AssertionError("no timeout")

@dk.remote
def ignore_interrupts():
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # and leaves it so for later calls
    return os.getpid()

# A running task is interrupted by a cancel, also in a worker where an earlier call
# ignored SIGINT: tried until a nap runs in such a worker.
ignoring = set(dk.get([ignore_interrupts.remote() for _ in range(8)]))
for attempt in range(10):
    started = os.path.join(tempfile.mkdtemp(), "started")
    slow = nap.remote(30, started)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (os.path.exists(started) and
                                               os.path.getsize(started)):
        time.sleep(0.01)
    assert os.path.exists(started), "nap(30) never started"
    ran_in = int(open(started).read())
    cancelled_at = time.monotonic()
    dk.cancel(slow)
    try:
        dk.get(slow, timeout=20)
    except dk.TaskCancelledError:
        assert time.monotonic() - cancelled_at < 5
    else:
        raise AssertionError("not cancelled")
    if ran_in in ignoring:
        break
    ignoring |= set(dk.get([ignore_interrupts.remote() for _ in range(8)]))
else:
    raise AssertionError(f"no nap ran in a worker that ignored SIGINT: {ignoring}")

@dk.remote
class Counter:
    def __init__(self, start):
        self.n = start
    def add(self, k):
        self.n += k
        return self.n
    @ray.method(num_returns=2)   # Ray's mark, left in code moved from Ray: our options rule
    def both(self):
        return self.n, -self.n

counter = Counter.remote(10)
assert dk.get([counter.add.remote(1) for _ in range(3)]) == [11, 12, 13]
assert dk.get(counter.both.remote()) == (13, -13)
dk.kill(counter)
try:
    dk.get(counter.add.remote(1), timeout=20)
except dk.ActorDiedError:
    pass
else:
    raise AssertionError("the killed actor answered")

from distkernel.api import runtime
try:
    runtime.engine().resize(4)
except dk.DistkernelError as error:
    assert "Ray" in str(error)
else:
    raise AssertionError("a Ray cluster was resized")

dk.shutdown()
print("ray engine ok")
"""


#: A driver started in the background by a shell without job control ignores SIGINT, and
#: so do the Ray workers it starts: a cancel must still interrupt a running task.
IGNORING_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"


def test_the_api_on_a_ray_of_its_own(tmp_path):
    done = run_driver_script(tmp_path, SCRIPT + NOTHING_LEFT, timeout=240,
                             prelude=IGNORING_SIGINT)
    assert "ray engine ok" in done.stdout


RECORDS = """
import sys
import time
import distkernel as dk
from distkernel.api import runtime

dk.init(address=ADDRESS)   # the module's cluster (conftest.py)
engine = runtime.current_engine()
follow_cells(engine)   # what the notebook front does with task output (scripts.CELLS)

@dk.remote
def hello(i):
    print("hello", i)
    print("careful", i, file=sys.stderr)
    return i

@dk.remote
def boom():
    print("about to fail")
    raise ValueError("boom")

@dk.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        print("adding", k)
        self.n += k
        return self.n

@dk.remote
class Echo:
    async def ping(self, x):
        print("ping", x)
        return x

@dk.remote
def nap(seconds):
    for _ in range(int(seconds * 10)):   # Ray interrupts a task between bytecodes
        time.sleep(0.1)
    return seconds

before = time.time()
assert dk.get([hello.remote(i) for i in range(4)]) == [0, 1, 2, 3]
records = settled("In [1]", 4)
assert len(records) == 4, records
for record in records:
    assert record.name == "hello" and record.kind == "task" and record.status == "finished"
    assert before <= record.submitted <= record.started <= record.finished, record
    assert record.worker_id == 1, record   # the node's number
cell[0] = "In [2]"   # the next cell
try:
    dk.get(boom.remote())
except ValueError:
    pass
counter, echo = Counter.remote(), Echo.remote()
assert dk.get([counter.add.remote(1), counter.add.remote(2), echo.ping.remote(5)]) == [1, 3, 5]
second = {r.name: r for r in settled("In [2]", 6)}   # with the two actors' creations
assert second["boom"].status == "failed" and "ValueError: boom" in second["boom"].error, second
assert second["Counter.add"].kind == "actor_method" and second["Echo.ping"].status == "finished"
assert second["Counter"].kind == "actor_create" and second["Echo"].status == "finished", second

with lock:
    by_stream = {s: sorted(t for _, tag, stream, t in written if tag == "In [1]" and stream == s)
                 for s in ("stdout", "stderr")}
    later = [(tag, text) for _, tag, _, text in written if tag == "In [2]"]
first, errors = by_stream["stdout"], by_stream["stderr"]
assert first == [f"hello {i}\\n" for i in range(4)], written
assert errors == [f"careful {i}\\n" for i in range(4)], written
assert ("In [2]", "about to fail\\n") in later, "a failed task's output goes to its cell too"
assert {("In [2]", "adding 1\\n"), ("In [2]", "adding 2\\n"), ("In [2]", "ping 5\\n")} <= set(later)

status = dk.status()["counters"]
assert (status["submitted"], status["finished"], status["failed"]) == (10, 9, 1), status

cell[0] = "In [3]"   # interrupting this cell cancels its tasks, as on the local engine
naps = [nap.remote(30) for _ in range(3)]
time.sleep(1.5)
assert len(engine.cancel_cell("In [3]")) == 3

all_cancelled(naps)   # (scripts.CELLS)

cell[0] = "In [4]"   # tasks that tasks submit: recorded, and their output, under this cell

@dk.remote
def parent(n):
    print("parent starts")
    return sum(dk.get([hello.remote(i) for i in range(n)]))

assert dk.get(parent.remote(2)) == 1
fourth = settled("In [4]", 3)
assert sorted(r.name for r in fourth) == ["hello", "hello", "parent"], fourth
assert all(r.status == "finished" and r.worker_id == 1 for r in fourth), fourth

assert output_of("In [4]", 5) == ["careful 0\\n", "careful 1\\n", "hello 0\\n",
                                  "hello 1\\n", "parent starts\\n"], written

cell[0] = "In [5]"   # a task submitted inside a task that ends after it, and one that fails

@dk.remote
def child_fails():
    print("child fails")
    raise KeyError("lost")

@dk.remote
def leaves_early():
    dk.wait([child_fails.remote()])
    late = nap.remote(1.5)   # still running when its parent has ended
    return "left"

assert dk.get(leaves_early.remote()) == "left"
cell[0] = "In [6]"
fifth = {r.name: r for r in settled("In [5]", 3)}
assert sorted(fifth) == ["child_fails", "leaves_early", "nap"], fifth
assert fifth["nap"].status == "finished" and fifth["nap"].finished > fifth["leaves_early"].finished
assert fifth["child_fails"].status == "failed" and "KeyError" in fifth["child_fails"].error, fifth
assert output_of("In [5]", 1) == ["child fails\\n"], written

cell[0] = "In [7]"   # interrupting a cell cancels the tasks its tasks submitted too

@dk.remote
def waits_on_naps(n):
    return dk.get([nap.remote(30) for _ in range(n)])

waiting = waits_on_naps.remote(3)   # two naps run, one waits for a CPU
deadline = time.monotonic() + 20
while len(engine.timeline(cell="In [7]")) < 4:
    assert time.monotonic() < deadline, engine.timeline(cell="In [7]")
    time.sleep(0.05)
time.sleep(1)
assert len(engine.cancel_cell("In [7]")) == 4   # with the three it submitted
all_cancelled([waiting])
seventh = settled("In [7]", 4)
assert [r.status for r in seventh] == ["cancelled"] * 4, seventh

cell[0] = "In [8]"   # and the tasks a task submitted and returned, once it has ended

@dk.remote
def launcher(n):
    return [nap.remote(30) for _ in range(n)]

launched = dk.get(launcher.remote(2))
deadline = time.monotonic() + 20
while len(engine.timeline(cell="In [8]")) < 3:
    assert time.monotonic() < deadline, engine.timeline(cell="In [8]")
    time.sleep(0.05)
assert len(engine.cancel_cell("In [8]")) == 2
all_cancelled(launched)
eighth = sorted((r.name, r.status) for r in settled("In [8]", 3))
assert eighth == [("launcher", "finished"), ("nap", "cancelled"), ("nap", "cancelled")], eighth

cell[0] = "In [9]"   # ... also those the notebook never saw a ref of

@dk.remote
def leaves_running():
    nap.remote(30)
    return "left"

assert dk.get(leaves_running.remote()) == "left"
deadline = time.monotonic() + 20
while len(engine.timeline(cell="In [9]")) < 2:
    assert time.monotonic() < deadline, engine.timeline(cell="In [9]")
    time.sleep(0.05)
time.sleep(1)   # running by now
assert len(engine.cancel_cell("In [9]")) == 1
ninth = sorted((r.name, r.status) for r in settled("In [9]", 2))
assert ninth == [("leaves_running", "finished"), ("nap", "cancelled")], ninth
dk.shutdown()
print("records ok")
"""


def test_records_timings_and_output_of_each_cell_on_ray(tmp_path, ray_address):
    """Each task's record (times, node, outcome) and printed output reach the driver when
    it ends, filed under the cell that submitted it even once another cell runs; and
    interrupting a cell cancels its tasks there."""
    done = run_driver_script(tmp_path, CELLS + RECORDS + NOTHING_LEFT, timeout=240,
                             prelude=f"ADDRESS = {ray_address!r}\n")
    assert "records ok" in done.stdout


CHANNEL = """
import os
import sys
import threading
import time
import distkernel as dk
from distkernel.api import runtime

dk.init(address=ADDRESS)   # the module's cluster (conftest.py)
engine = runtime.current_engine()
written, lock = [], threading.Lock()

def write(node, task_id, stream, text):
    with lock:
        written.append((engine.cell_of_task(task_id), text))

engine.route_output(lambda: "In [1]", write)
MARKER = sys.argv[0] + ".tried"

@dk.remote(max_retries=1, retry_exceptions=True)
def flaky():
    first = not os.path.exists(MARKER)
    print("attempt", "one" if first else "two")
    if first:
        open(MARKER, "w").close()
        raise ValueError("the first attempt fails")
    return "second attempt"

@dk.remote(max_retries=0)
def crash():
    os._exit(1)

@dk.remote
def fail():
    raise ValueError("upstream")

@dk.remote
def after(x):
    return x

@dk.remote
def hello(text):
    print(text)
    return text

@dk.remote
def unsendable():
    return {"guard": threading.Lock()}   # returns, then its result cannot be pickled

@dk.remote
def nap(seconds):
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
    return seconds

@dk.remote(num_returns=2)
def miscounted():
    print("counting")
    return 5   # one value where two were declared

def settled(count):
    deadline = time.monotonic() + 20
    while True:
        records = engine.timeline(cell="In [1]")
        if len(records) >= count and all(r.status != "pending" for r in records):
            return {r.name: r for r in records}
        assert time.monotonic() < deadline, records
        time.sleep(0.05)

def arrived(expected):   # output is written right after its record ends
    deadline = time.monotonic() + 20
    while not expected <= set(written):
        assert time.monotonic() < deadline, written
        time.sleep(0.05)

# A call that raises sends its report too, and Ray runs it again: the record ends with
# the attempt that returned, and the output of both reaches the cell.
assert dk.get(flaky.remote()) == "second attempt"
# Tasks that end without sending a report: their worker died, or an argument failed.
try:
    dk.get(crash.remote())
except dk.WorkerCrashedError:
    pass
else:
    raise AssertionError("no crash")
try:
    dk.get(after.remote(fail.remote()))
except ValueError:
    pass
else:
    raise AssertionError("no error from the argument")
try:
    dk.get(unsendable.remote())
except dk.DistkernelError as error:
    assert "lock" in str(error), error
else:
    raise AssertionError("a lock travelled")
try:   # its report, with its output, says why, as the local engine does
    dk.get(list(miscounted.remote()))
except ValueError as error:
    assert "num_returns=2 but returned int 5; return a tuple" in str(error), error
else:
    raise AssertionError("one value made two")
records = settled(6)
assert records["unsendable"].status == "failed" and "lock" in records["unsendable"].error, records
assert records["miscounted"].status == "failed" and records["miscounted"].started, records
assert "num_returns=2" in records["miscounted"].error, records
assert records["flaky"].status == "finished" and records["flaky"].started, records
assert records["crash"].status == "failed" and records["crash"].error, records
assert records["after"].status == "failed" and "upstream" in records["after"].error, records
arrived({("In [1]", "attempt one\\n"), ("In [1]", "attempt two\\n"), ("In [1]", "counting\\n")})

# A report that comes before its task is recorded (a short task) waits for the record.
busy = nap.remote(3)   # something in flight: the watcher takes reports every round
submitted = engine._book.submitted
def recorded_late(*args, **kwargs):
    time.sleep(0.5)
    return submitted(*args, **kwargs)
engine._book.submitted = recorded_late
early = hello.remote("early bird")
engine._book.submitted = submitted
assert dk.get(early) == "early bird"
record = settled(7)["hello"]
assert record.status == "finished" and record.started and record.worker_id == 1, record
arrived({("In [1]", "early bird\\n")})
dk.get(busy)

# Tasks submitted inside a task that end without a report of their own: the record of
# each still ends, under the cell, as its result says (the parent's worker tells).
@dk.remote(max_retries=1, retry_exceptions=True)
def always_fails():
    raise ValueError("every attempt fails")

@dk.remote
def submits_and_waits():
    children = [crash.remote(), always_fails.remote(), nap.remote(30)]
    time.sleep(1)
    dk.cancel(children[2])
    dk.wait(children, num_returns=3, timeout=60)
    return "waited"

assert dk.get(submits_and_waits.remote()) == "waited"
records = settled(12)
assert records["crash"].status == "failed" and records["crash"].error, records
assert records["always_fails"].status == "failed", records
assert "every attempt fails" in records["always_fails"].error, records
assert records["nap"].status == "cancelled", records
dk.shutdown()
print("channel ok")
"""


def test_reports_on_the_channel_end_every_record(tmp_path, ray_address):
    """Reports come on the driver's channel: a call that raised and ran again ends as the
    attempt that returned, with the output of both; a task that sends no report (its
    worker died, an argument failed) ends from its result; a report that comes before
    its task is recorded is filed when it is; a call whose result cannot be sent after it
    returned ends as failed."""
    done = run_driver_script(tmp_path, CHANNEL + NOTHING_LEFT, timeout=240,
                             prelude=f"ADDRESS = {ray_address!r}\n")
    assert "channel ok" in done.stdout


SERIALIZATION = """
import threading
import distkernel as dk

dk.init(address=ADDRESS)   # the module's cluster (conftest.py)

class Point:                      # a notebook class that pickle refuses
    def __init__(self, x):
        self.x = x
    def __reduce__(self):
        raise TypeError("Point cannot be pickled as is")

@dk.remote
def same(value):
    return value

assert dk.get(same.remote(1)) == 1  # submitted before there was a registry to take along
dk.register_serializer(Point, serializer=lambda p: p.x, deserializer=lambda x: Point(x))
assert dk.get(same.remote(Point(3))).x == 3  # now its calls take the registry

@dk.remote
def double(p):
    return Point(p.x * 2)         # made in a Ray worker, sent back through the registry

@dk.remote
class Keeper:
    def __init__(self, p):
        self.p = p
    def get(self):
        return self.p

assert dk.get(double.remote(Point(21))).x == 42
assert dk.get(dk.put(Point(5))).x == 5
assert dk.get([double.remote(Point(i)) for i in range(20)])[-1].x == 38  # every worker
keeper = Keeper.remote(Point(7))
assert dk.get(keeper.get.remote()).x == 7
dk.deregister_serializer(Point)
try:
    dk.put(Point(1))
except dk.SerializationError as error:
    assert "Point" in str(error), error
else:
    raise AssertionError("a deregistered class still travelled")
@dk.remote
def make_point(x):
    return Point(x)

try:
    dk.get(make_point.remote(1))  # the worker no longer knows how to send a Point back
except dk.TaskError as error:
    assert "Point cannot be pickled" in str(error), error
else:
    raise AssertionError("the worker kept the old registry")

class Holder:
    def __init__(self):
        self.lock = threading.Lock()

for attempt in (lambda: dk.put(Holder()), lambda: double.remote(Holder())):
    try:
        attempt()
    except dk.SerializationError as error:   # the culprit's path, as on the local engine
        assert "Holder(...).lock" in str(error) and "_thread.lock" in str(error), error
    else:
        raise AssertionError("a lock travelled")

@dk.remote
class Named:
    def hello(self):
        return "hello"

named = Named.options(name="keeper-of-names").remote()
assert dk.get(named.hello.remote()) == "hello"
again = dk.get_actor("keeper-of-names")
assert dk.get(again.hello.remote()) == "hello"
try:
    dk.get_actor("nobody-here")
except ValueError:
    pass
else:
    raise AssertionError("get_actor found an actor that does not exist")
dk.shutdown()
print("serialization ok")
"""


def test_serializers_errors_and_named_actors_on_ray(tmp_path, ray_address):
    """register_serializer applies to what the driver sends and to what each Ray worker
    sends back (the registry goes with every call, so workers started later have it
    too), deregister_serializer undoes both; a value that cannot travel raises our
    SerializationError naming the member; get_actor finds a named actor."""
    done = run_driver_script(tmp_path, SERIALIZATION + NOTHING_LEFT, timeout=240,
                             prelude=f"ADDRESS = {ray_address!r}\n")
    assert "serialization ok" in done.stdout


NESTED = """
import distkernel as dk

dk.init(address=ADDRESS)   # the module's cluster (conftest.py)

@dk.remote
def square(x):
    return x * x

@dk.remote
def total(refs):                  # refs inside a list: ours again in the task
    return sum(dk.get(refs))

@dk.remote
def fan_out(n):                   # the API inside a task: tasks of its own, and get
    return dk.get([square.remote(i) for i in range(n)])

@dk.remote
def make_refs(n):                 # refs made in a task, returned to the driver
    return [square.remote(i) for i in range(n)]

@dk.remote
def deep(d):
    return dk.get(d["k"][0])

@dk.remote
class Accumulator:
    def __init__(self, start):
        self.value = dk.get(start[0])   # the API in an actor's constructor too
    def add(self, refs):
        self.value += sum(dk.get(refs))
        return self.value

parts = [square.remote(i) for i in range(5)]
assert dk.get(total.remote(parts)) == 30
assert dk.get(fan_out.remote(4)) == [0, 1, 4, 9]
assert dk.get(dk.get(make_refs.remote(3))) == [0, 1, 4]
assert dk.get(deep.remote(dk.put({"k": [dk.put(7)]}))) == 7
accumulator = Accumulator.remote([dk.put(10)])
assert dk.get(accumulator.add.remote(parts)) == 40

from distkernel.api import runtime   # options made per call (a name each) do not pile up
named = [square.options(name=f"square-{i}").remote(i) for i in range(300)]
assert dk.get(named)[-1] == 299 * 299
assert len(runtime.current_engine()._optioned) <= 256
dk.shutdown()
print("nested ok")
"""


def test_refs_inside_values_and_the_api_inside_tasks_on_ray(tmp_path, ray_address):
    """Our refs travel inside arguments, results and stored values as the Ray refs they
    stand for, and a task or actor calls get / put / .remote as the driver does."""
    done = run_driver_script(tmp_path, NESTED + NOTHING_LEFT, timeout=240,
                             prelude=f"ADDRESS = {ray_address!r}\n")
    assert "nested ok" in done.stdout


def test_leaving_without_shutdown_starts_no_second_ray(tmp_path):
    """A notebook kernel or script that ends without shutdown(): Ray shuts itself down at
    exit first, and our own shutdown then must not touch Ray (any call would start a new
    one)."""
    done = run_driver_script(tmp_path, """
import time
import distkernel as dk
dk.init(address="ray", num_cpus=1)
assert dk.get(dk.put(41)) == 41

@dk.remote
def nap():
    time.sleep(30)

running = nap.remote()   # in flight at exit: the records watcher is busy
time.sleep(0.5)
print("leaving")
""", timeout=120)
    assert "leaving" in done.stdout
    started = (done.stdout + done.stderr).count("Started a local Ray instance")
    assert started == 1, done.stderr


OVER_TCP = """
import ray
import distkernel as dk
from distkernel.api import runtime

def without_rings():   # in every Ray worker as it starts: as on a machine that has none
    from distkernel.backends.ray import report_ring
    report_ring.available = lambda: False

ray.init(address=ADDRESS, runtime_env={"worker_process_setup_hook": without_rings})
dk.init(address=ADDRESS)   # the module's cluster (conftest.py), on this connection
engine = runtime.current_engine()
follow_cells(engine)

@dk.remote
def hello(i):
    print("hello", i)
    return i

@dk.remote
def parent():
    return dk.get(hello.remote(100))

@dk.remote
class Tally:
    def __init__(self):
        self.seen = []
    def note(self, item):
        print("noting", item)
        self.seen.append(item)
        return len(self.seen)

tally = Tally.remote()
assert dk.get([hello.remote(i) for i in range(4)]) == [0, 1, 2, 3]
assert dk.get([tally.note.remote("a"), tally.note.remote("b")]) == [1, 2]
assert dk.get(parent.remote()) == 100
records = settled("In [1]", 9)
assert sorted(r.name for r in records) == ["Tally", "Tally.note", "Tally.note",
    "hello", "hello", "hello", "hello", "hello", "parent"], records
assert all(r.status == "finished" for r in records), records
calls = [r for r in records if r.kind != "actor_create"]   # (that one ends when it is ready)
assert all(r.started and r.worker_id == 1 for r in calls), records   # times from reports
expected = sorted([f"hello {i}\\n" for i in (0, 1, 2, 3, 100)] + ["noting a\\n", "noting b\\n"])
assert output_of("In [1]", 7) == expected, written
listener = engine._channel   # every report came on TCP: no worker handed over a ring
assert len(listener._peers) >= 2 and not listener.ringed(), listener._peers
dk.shutdown()
ray.shutdown()
print("tcp ok")
"""


def test_reports_over_tcp_from_workers_without_a_ring(tmp_path, ray_address):
    """Workers that cannot make a report ring (another machine, a system without memfd)
    send their reports on TCP: records, nested tasks and output arrive all the same."""
    done = run_driver_script(tmp_path, CELLS + OVER_TCP + NOTHING_LEFT, timeout=240,
                             prelude=f"ADDRESS = {ray_address!r}\n")
    assert "tcp ok" in done.stdout
