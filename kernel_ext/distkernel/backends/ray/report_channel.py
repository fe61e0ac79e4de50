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
dropped before anything of its is unpickled or mapped.

The driver may write back on a worker's connection (``tell``): what only that worker can
do, such as cancelling a task it submitted, whose result only it holds. The worker reads
it when it looks (``requests``).

Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import os
import pickle
import secrets
import select
import selectors
import socket
import struct
import threading
import time
from typing import Any, NamedTuple

from distkernel.backends.ray import report_ring

#: A frame: its length (4 bytes, big-endian), then that many bytes.
_LENGTH = struct.Struct("!I")
#: A frame of this length in a ring has no bytes: the next frame on the socket is next.
_ON_SOCKET = 0xFFFFFFFF
#: The first frame of a connection is the token, of this many bytes.
TOKEN_BYTES = 32
#: How long a worker waits for the driver to take a report before giving up on it (the
#: driver then ends the task's record from its result, without its times and output).
SEND_TIMEOUT = 10.0
#: How often a worker whose ring is full looks whether there is room again.
_FULL_LOOK = 0.002


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
    frame = _LENGTH.pack(len(data)) + data
    with _send_lock:  # frames of concurrent calls (threaded or async actors) never interleave
        try:
            link = _links.get(address)
            if link is None:
                link = _links[address] = _connect(address)
            ring = link.ring
            if ring is None:
                link.connection.sendall(frame)
            elif len(frame) <= ring.capacity // 4:
                _put(link, frame)
            else:  # too large for the ring: on the socket, its place marked in the ring
                _put(link, _LENGTH.pack(_ON_SOCKET))
                link.connection.sendall(frame)
            return True
        except OSError:
            dropped = _links.pop(address, None)
            if dropped is not None:
                dropped.close()  # a frame may be half sent: the next report opens anew
            _inbox.pop(address, None)
            return False


def _put(link: _Link, frame: bytes) -> None:
    """Put ``frame`` into the link's ring, waiting for room while its driver is there."""
    ring = link.ring
    assert ring is not None
    if ring.put(frame):
        return
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
        taken = _whole_frames(pending)
    for frame in taken:
        try:
            messages.append(pickle.loads(frame))
        except Exception:  # noqa: BLE001 - a request this version cannot read: skipped
            continue
    return messages


def _whole_frames(pending: bytearray, limit: int | None = None) -> list[bytes]:
    """The whole frames at the start of ``pending`` (up to ``limit``), taken out of it."""
    frames: list[bytes] = []
    at = 0
    while len(pending) - at >= _LENGTH.size and (limit is None or len(frames) < limit):
        (length,) = _LENGTH.unpack_from(pending, at)
        end = at + _LENGTH.size + length
        if len(pending) < end:
            break
        frames.append(bytes(pending[at + _LENGTH.size:end]))
        at = end
    del pending[:at]
    return frames


def _connect(address: ChannelAddress) -> _Link:
    """A link to the driver: on its machine, by its Unix socket with a ring if that can be
    had; else by TCP."""
    token_frame = _LENGTH.pack(len(address.token)) + address.token
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


# -- the driver's side ---------------------------------------------------------------------------

class _Peer:
    """A worker's connection, with what has come of its current frame; its ring, and
    descriptors it sent before its token was checked."""

    __slots__ = ("connection", "descriptors", "local", "number", "pending", "ring", "trusted")

    def __init__(self, connection: socket.socket, number: int, local: bool) -> None:
        self.connection = connection
        self.number = number
        self.local = local
        self.pending = bytearray()
        self.trusted = False
        self.ring: report_ring.RingReader | None = None
        self.descriptors: list[int] = []


class ReportListener:
    """The driver's end: accepts workers' connections and reads their reports, when asked
    (``drain``), from whichever thread asks (one at a time); writes back to one
    (``tell``), named by the number ``drain_from`` gave its reports."""

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self._server.setblocking(False)
        self._local_server, local = _local_server()
        self.address = ChannelAddress(host, self._server.getsockname()[1],
                                      secrets.token_bytes(TOKEN_BYTES), local,
                                      machine_id() if local else "")
        self._selector = selectors.DefaultSelector()
        for server in (self._server, self._local_server):
            if server is not None:
                self._selector.register(server, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._numbers = itertools.count(1)
        self.closed = False

    def drain(self, timeout: float = 0.0) -> list[Any]:
        """The reports that have come in, in the order each worker sent them. With a
        ``timeout``, waits up to that long for the first to come on a socket (what comes
        in a ring is taken at the next look)."""
        return [message for _, message in self.drain_from(timeout)]

    def drain_from(self, timeout: float = 0.0) -> list[tuple[int, Any]]:
        """As ``drain``, each report with the number of the connection it came on."""
        messages: list[tuple[int, Any]] = []
        with self._lock:
            if self.closed:
                return messages
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._accept(key.fileobj, messages)  # type: ignore[arg-type]
                else:
                    self._read(key.data, messages)
            for peer in self.ringed():  # read at every look: a ring wakes no one
                self._take_ring(peer, messages)
        return messages

    def ringed(self) -> list[_Peer]:
        """The workers whose reports come in a ring."""
        return [peer for peer in self._peers.values() if peer.ring is not None]

    def tell(self, number: int, message: Any) -> bool:
        """Write ``message`` back to the worker whose connection has this number, without
        waiting; False if it is gone, or its buffer is full (a small message, as a rule,
        never finds it so): then the connection is dropped, since a frame may be half
        written, and the worker opens a new one with its next report."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            peer = self._peers.get(number)
            if peer is None or self.closed:
                return False
            try:
                peer.connection.sendall(_LENGTH.pack(len(data)) + data)
            except OSError:
                self._drop(peer)
                return False
        return True

    def _accept(self, server: socket.socket, messages: list[tuple[int, Any]]) -> None:
        """Take the new connections, and what they have sent already (a worker's first
        report may be in before its connection is taken)."""
        while True:
            try:
                connection, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setblocking(False)
            peer = _Peer(connection, next(self._numbers), server is self._local_server)
            self._peers[peer.number] = peer
            self._selector.register(connection, selectors.EVENT_READ, peer)
            self._read(peer, messages)

    def _read(self, peer: _Peer, messages: list[tuple[int, Any]]) -> None:
        """Read what ``peer`` sent; drop it once it is gone (what it sent before it went,
        a worker's last report before its process ended, is taken first) or untrusted."""
        gone = False
        while not gone:
            try:
                if peer.local and not peer.trusted:  # its ring comes with its token
                    data, descriptors, _, _ = socket.recv_fds(peer.connection, 1 << 20, 1)
                    peer.descriptors += descriptors
                else:
                    data = peer.connection.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            gone = not data
            peer.pending += data
        if not self._frames(peer, messages):
            self._drop(peer)
        elif gone:
            if peer.ring is not None:
                self._take_ring(peer, messages)
            self._drop(peer)

    def _frames(self, peer: _Peer, messages: list[tuple[int, Any]]) -> bool:
        """Take the whole frames out of ``peer.pending`` (with a ring, those on the socket
        wait for their markers); False for a peer without the token, or whose ring is
        not one."""
        pending = peer.pending
        if not peer.trusted:
            if len(pending) >= _LENGTH.size and \
                    _LENGTH.unpack_from(pending)[0] != TOKEN_BYTES:
                return False
            token = _whole_frames(pending, limit=1)
            if not token:
                return True
            if not hmac.compare_digest(token[0], self.address.token):
                return False
            peer.trusted = True
            if peer.descriptors:
                descriptor, *others = peer.descriptors
                peer.descriptors = []
                for other in others:
                    os.close(other)
                try:
                    peer.ring = report_ring.RingReader(descriptor)
                except ValueError:
                    return False
        if peer.ring is None:
            messages.extend(_unpickled(peer.number, _whole_frames(pending)))
        return True

    def _take_ring(self, peer: _Peer, messages: list[tuple[int, Any]]) -> None:
        """The frames ``peer`` put into its ring since the last look, with those on its
        socket in their places; a peer whose ring or socket fails is dropped."""
        assert peer.ring is not None
        frames: list[bytes] = []
        try:
            data = peer.ring.take()
            at = 0
            while at < len(data):
                (length,) = _LENGTH.unpack_from(data, at)
                at += _LENGTH.size
                if length == _ON_SOCKET:
                    frames.append(_frame_from_socket(peer))
                    continue
                if at + length > len(data):
                    msg = "a frame cut short in a report ring"
                    raise ValueError(msg)
                frames.append(data[at:at + length])
                at += length
        except (ValueError, OSError, struct.error):
            self._drop(peer)
        messages.extend(_unpickled(peer.number, frames))

    def _drop(self, peer: _Peer) -> None:
        self._peers.pop(peer.number, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.connection)
        peer.connection.close()
        for descriptor in peer.descriptors:
            os.close(descriptor)
        peer.descriptors = []
        if peer.ring is not None:
            peer.ring.close()
            peer.ring = None

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for peer in list(self._peers.values()):
                self._drop(peer)
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()


def _local_server() -> tuple[socket.socket | None, str]:
    """A Unix socket in the abstract namespace (no file to leave behind) for workers on
    this machine, and its name; none where rings cannot be used."""
    if not report_ring.available():
        return None, ""
    name = f"distkernel-reports-{secrets.token_hex(12)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind("\0" + name)
        server.listen()
        server.setblocking(False)
    except OSError:
        server.close()
        return None, ""
    return server, name


def _frame_from_socket(peer: _Peer) -> bytes:
    """The next whole frame on ``peer``'s socket, which its ring said comes next: the
    worker is writing it now, so wait for its end (up to SEND_TIMEOUT)."""
    deadline = time.monotonic() + SEND_TIMEOUT
    while True:
        whole = _whole_frames(peer.pending, limit=1)
        if whole:
            return whole[0]
        left = deadline - time.monotonic()
        if left <= 0:
            msg = "a report on the socket did not come whole"
            raise ConnectionError(msg)
        waiting = select.poll()  # (not select(): a driver may hold descriptors past 1024)
        waiting.register(peer.connection, select.POLLIN)
        waiting.poll(left * 1000)
        try:
            data = peer.connection.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            msg = "the worker went while sending a report"
            raise ConnectionError(msg)
        peer.pending += data


def _unpickled(number: int, frames: list[bytes]) -> list[tuple[int, Any]]:
    messages = []
    for frame in frames:
        try:
            messages.append((number, pickle.loads(frame)))
        except Exception:  # noqa: BLE001 - a report this driver cannot read: skipped
            continue
    return messages
