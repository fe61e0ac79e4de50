"""How a task's report reaches the driver: over a connection of our own, not through Ray.

Returned by the task as one more value, each report cost Ray a second object per call
(made and stored by the worker, counted and fetched by the driver): about a tenth of
Ray's throughput and of its actor call round trip. Here the driver listens, and every Ray
worker process keeps one connection to it, on which it puts each report as one frame
before the call returns its result. So by the time a result is in the driver, its report
is at least on its way.

    worker on the driver's machine ── Unix socket (token, ring) ──┐
         └── report ring (shared memory, ``report_ring``) ────────┤
    worker on another machine ─────── TCP (token, reports) ───────┴──► ReportListener

A worker on the driver's machine connects on the driver's Unix socket and hands it a ring
of shared memory with its first bytes; its reports go into the ring, without a system
call (a socket's cost a quarter of all our front added to a call), and the driver reads
it when it looks. A report too large for the ring goes on the socket, after a marker in
the ring that keeps its place in the order. A worker elsewhere writes its reports on TCP.

A connection opens with the driver's token (random, made per driver, carried to the
workers inside the task's function as Ray ships it): a peer that does not send it is
dropped before anything of its is unpickled or mapped. After it, a frame holds a pickled
message, or the report of a call that printed and submitted nothing, packed
(``send_short``): most calls, for which pickling was a third of the report's cost.

The driver may write back on a worker's connection (``tell``): what only that worker can
do, such as cancelling a task it submitted, whose result only it holds. The worker reads
it when it looks (``requests``).

This module is the workers' side, and what both sides share; the driver's is
``report_listener``. Workers import it: it needs the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import threading
import time
from typing import Any, NamedTuple

from distkernel.backends.ray import report_ring

#: A frame: its length (4 bytes, big-endian), then that many bytes.
FRAME_LENGTH = struct.Struct("!I")
#: A frame of this length in a ring has no bytes: the next frame on the socket is next.
ON_SOCKET = 0xFFFFFFFF
#: The first frame of a connection is the token, of this many bytes.
TOKEN_BYTES = 32
#: How long a worker waits for the driver to take a report before giving up on it (the
#: driver then ends the task's record from its result, without its times and output).
SEND_TIMEOUT = 10.0
#: How often a worker whose ring is full looks whether there is room again.
_FULL_LOOK = 0.002
#: The first byte of a short report (``send_short``): no pickle starts with it (a pickle
#: of protocol 2 or later starts with 0x80).
SHORT = b"S"
#: A short report's fixed part: the marker, started, finished, bytes in, bytes out, the
#: process id, and the lengths of Ray's task id and node id that follow it (ASCII hex).
_SHORT = struct.Struct("!cddqqiHH")
#: The same, after its frame's length: a worker packs both at once.
_FRAMED_SHORT = struct.Struct(FRAME_LENGTH.format + _SHORT.format[1:])


class ChannelAddress(NamedTuple):
    host: str
    port: int
    token: bytes
    local: str = ""    # the driver's Unix socket (abstract), for workers on its machine
    machine: str = ""  # the driver's machine (its boot id): where ``local`` can be reached


def machine_id() -> str:
    """This machine's boot id ("" if unknown): the same in every process on it."""
    known = _machine.get("id")
    if known is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as file:
                known = file.read().strip()
        except OSError:
            known = ""
        _machine["id"] = known
    return known


_machine: dict[str, str] = {}


# -- the worker's side ---------------------------------------------------------------------------

class _Link:
    """A worker's connection to one driver, and its ring when on the driver's machine."""

    __slots__ = ("connection", "ring")

    def __init__(self, connection: socket.socket,
                 ring: report_ring.RingWriter | None = None) -> None:
        self.connection = connection
        self.ring = ring

    def close(self) -> None:
        self.connection.close()
        if self.ring is not None:
            self.ring.close()


_links: dict[ChannelAddress, _Link] = {}
_inbox: dict[ChannelAddress, bytearray] = {}  # what the driver wrote back, not yet whole
_send_lock = threading.Lock()


def send(address: ChannelAddress, message: Any) -> bool:
    """Send ``message`` (pickled) to the driver at ``address``; False if it could not be
    sent (the driver is gone, or took no report for SEND_TIMEOUT seconds). A report put
    into a ring before its driver went is not known to be lost: True."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _send_frame(address, FRAME_LENGTH.pack(len(data)) + data)


def _send_frame(address: ChannelAddress, frame: bytes) -> bool:
    with _send_lock:  # frames of concurrent calls (threaded or async actors) never interleave
        try:
            link = _links.get(address)
            if link is None:
                link = _links[address] = _connect(address)
            ring = link.ring
            if ring is None:
                link.connection.sendall(frame)
            elif len(frame) <= ring.capacity // 4:
                if not ring.put(frame):
                    _put_when_room(link, frame)
            else:  # too large for the ring: on the socket, its place marked in the ring
                marker = FRAME_LENGTH.pack(ON_SOCKET)
                if not ring.put(marker):
                    _put_when_room(link, marker)
                link.connection.sendall(frame)
            return True
        except OSError:
            dropped = _links.pop(address, None)
            if dropped is not None:
                dropped.close()  # a frame may be half sent: the next report opens anew
            _inbox.pop(address, None)
            return False


def send_short(address: ChannelAddress, ray_task_id: str, started: float, finished: float,
               node_id: str, pid: int, bytes_in: int, bytes_out: int) -> bool:
    """``send`` of the report of a call that returned, printed nothing and submitted
    nothing (most calls): packed, not pickled, which takes the worker a few µs less a
    call (building the report and pickling it were a third of what sending it cost).
    The driver reads it as ``read_short``."""
    task, node = ray_task_id.encode(), node_id.encode()
    return _send_frame(address, _FRAMED_SHORT.pack(
        _SHORT.size + len(task) + len(node), SHORT, started, finished, bytes_in, bytes_out,
        pid, len(task), len(node)) + task + node)


def read_short(frame: bytes) -> tuple[str, bool, tuple[Any, ...]]:
    """The message ``send`` would have carried for a short report: Ray's task id, True (it
    returned), and the report's fields that are not at their defaults, in the order of
    ``runner.Report``. Raises ValueError or ``struct.error`` for a frame that is not one."""
    _, started, finished, bytes_in, bytes_out, pid, task_length, node_length = \
        _SHORT.unpack_from(frame)
    at = _SHORT.size
    if len(frame) != at + task_length + node_length:
        msg = "a short report of the wrong length"
        raise ValueError(msg)
    ray_task_id = frame[at:at + task_length].decode()
    node_id = frame[at + task_length:].decode()
    return ray_task_id, True, (started, finished, node_id, pid, "", "", bytes_in, bytes_out)


def _put_when_room(link: _Link, frame: bytes) -> None:
    """Put ``frame`` into the link's ring, which is full now: wait for room while its
    driver is there."""
    ring = link.ring
    assert ring is not None
    deadline = time.monotonic() + SEND_TIMEOUT
    while _driver_there(link.connection) and time.monotonic() < deadline:
        time.sleep(_FULL_LOOK)
        if ring.put(frame):
            return
    msg = "the driver took no report"
    raise ConnectionError(msg)


def _driver_there(connection: socket.socket) -> bool:
    """Whether the driver's end of ``connection`` is open (looked at without waiting)."""
    connection.setblocking(False)  # (with a timeout, recv would wait for data first)
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    finally:
        connection.settimeout(SEND_TIMEOUT)


def requests(address: ChannelAddress) -> list[Any]:
    """What the driver at ``address`` wrote back on this process's connection since the
    last look, without waiting (nothing if there is no connection)."""
    messages: list[Any] = []
    with _send_lock:
        link = _links.get(address)
        if link is None:
            return messages
        connection = link.connection
        pending = _inbox.setdefault(address, bytearray())
        connection.setblocking(False)  # (with a timeout, recv would wait for data first)
        try:
            while True:
                try:
                    data = connection.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:  # the driver is gone: the next report opens anew
                    _links.pop(address).close()
                    _inbox.pop(address, None)
                    break
                pending += data
        finally:
            if _links.get(address) is link:
                connection.settimeout(SEND_TIMEOUT)
        taken = whole_frames(pending)
    for frame in taken:
        try:
            messages.append(pickle.loads(frame))
        except Exception:  # noqa: BLE001 - a request this version cannot read: skipped
            continue
    return messages


def whole_frames(pending: bytearray, limit: int | None = None) -> list[bytes]:
    """The whole frames at the start of ``pending`` (up to ``limit``), taken out of it."""
    frames: list[bytes] = []
    at = 0
    while len(pending) - at >= FRAME_LENGTH.size and (limit is None or len(frames) < limit):
        (length,) = FRAME_LENGTH.unpack_from(pending, at)
        end = at + FRAME_LENGTH.size + length
        if len(pending) < end:
            break
        frames.append(bytes(pending[at + FRAME_LENGTH.size:end]))
        at = end
    del pending[:at]
    return frames


def _connect(address: ChannelAddress) -> _Link:
    """A link to the driver: on its machine, by its Unix socket with a ring if that can be
    had; else by TCP."""
    token_frame = FRAME_LENGTH.pack(len(address.token)) + address.token
    if address.local and address.machine == machine_id() and report_ring.available():
        with contextlib.suppress(OSError):
            return _connect_locally(address, token_frame)
    connection = socket.create_connection((address.host, address.port), timeout=SEND_TIMEOUT)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sendall(token_frame)
    return _Link(connection)


def _connect_locally(address: ChannelAddress, token_frame: bytes) -> _Link:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ring = None
    try:
        connection.settimeout(SEND_TIMEOUT)
        connection.connect("\0" + address.local)
        ring = report_ring.RingWriter()
        try:  # the ring goes with the token: the driver reads nothing of a peer before it
            sent = socket.send_fds(connection, [token_frame], [ring.descriptor])
        finally:
            os.close(ring.descriptor)
        if sent != len(token_frame):
            connection.sendall(token_frame[sent:])
    except OSError:
        connection.close()
        if ring is not None:
            ring.close()
        raise
    return _Link(connection, ring)


def close_links() -> None:
    """Close this process's links to drivers (a process that plays the worker for a
    while, as the tests do, and ends it)."""
    with _send_lock:
        for link in _links.values():
            link.close()
        _links.clear()
        _inbox.clear()


def _forget_links() -> None:
    """In a child forked from a worker: its parent's links are not its own (two writers
    would corrupt a ring), and the lock may have been held by a thread not copied."""
    global _send_lock
    _links.clear()
    _inbox.clear()
    _send_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_links)
