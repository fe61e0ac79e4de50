"""What every Ray driver script of these tests ends with: after shutdown, no process that
the script started is left (Ray's services, its workers, a cluster's nodes)."""

NOTHING_LEFT = """
import time as _time
import psutil as _psutil

_deadline = _time.monotonic() + 30
while _psutil.Process().children(recursive=True) and _time.monotonic() < _deadline:
    _time.sleep(0.2)
_left = [p.name() for p in _psutil.Process().children(recursive=True)]
assert not _left, f"still running after shutdown: {_left}"
"""
