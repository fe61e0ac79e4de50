"""How a task's report reaches the driver: over a socket of our own, not through Ray.

Returned by the task as one more value, each report cost Ray a second object per call
(made and stored by the worker, counted and fetched by the driver): about a tenth of
Ray's throughput and of its actor call round trip. Here the driver listens on a TCP port
and every Ray worker process keeps one connection to it, on which it writes each report
as one frame before the call returns its result. So by the time a result is in the
driver, its report is at least on its way; on the driver's own machine it is in the
socket's buffer already.

A connection opens with the driver's token (random, made per driver, carried to the
workers inside the task's function as Ray ships it): a peer that does not send it is
dropped before anything of its is unpickled.

The driver may write back on a worker's connection (``tell``): what only that worker can
do, such as cancelling a task it submitted, whose result only it holds. The worker reads
it when it looks (``requests``).

Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import pickle
import secrets
import selectors
import socket
import struct
import threading
from typing import Any, NamedTuple

#: A frame: its length (4 bytes, big-endian), then that many bytes.
_LENGTH = struct.Struct("!I")
#: The first frame of a connection is the token, of this many bytes.
TOKEN_BYTES = 32
#: How long a worker waits for the driver to take a report before giving up on it (the
#: driver then ends the task's record from its result, without its times and output).
SEND_TIMEOUT = 10.0


class ChannelAddress(NamedTuple):
    host: str
    port: int
    token: bytes


# -- the worker's side ---------------------------------------------------------------------------

_connections: dict[ChannelAddress, socket.socket] = {}
_inbox: dict[ChannelAddress, bytearray] = {}  # what the driver wrote back, not yet whole
_send_lock = threading.Lock()


def send(address: ChannelAddress, message: Any) -> bool:
    """Send ``message`` (pickled) to the driver at ``address``; False if it could not be
    sent (the driver is gone, or took no report for SEND_TIMEOUT seconds)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    frame = _LENGTH.pack(len(data)) + data
    with _send_lock:  # frames of concurrent calls (threaded or async actors) never interleave
        try:
            connection = _connections.get(address)
            if connection is None:
                connection = _connections[address] = _connect(address)
            connection.sendall(frame)
            return True
        except OSError:
            dropped = _connections.pop(address, None)
            if dropped is not None:
                dropped.close()  # a frame may be half sent: the next report opens anew
            return False


def requests(address: ChannelAddress) -> list[Any]:
    """What the driver at ``address`` wrote back on this process's connection since the
    last look, without waiting (nothing if there is no connection)."""
    messages: list[Any] = []
    with _send_lock:
        connection = _connections.get(address)
        if connection is None:
            return messages
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
                    _connections.pop(address).close()
                    _inbox.pop(address, None)
                    break
                pending += data
        finally:
            if _connections.get(address) is connection:
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


def _connect(address: ChannelAddress) -> socket.socket:
    connection = socket.create_connection((address.host, address.port), timeout=SEND_TIMEOUT)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sendall(_LENGTH.pack(len(address.token)) + address.token)
    return connection


# -- the driver's side ---------------------------------------------------------------------------

class _Peer:
    """A worker's connection, with what has come of its current frame."""

    __slots__ = ("connection", "number", "pending", "trusted")

    def __init__(self, connection: socket.socket, number: int) -> None:
        self.connection = connection
        self.number = number
        self.pending = bytearray()
        self.trusted = False


class ReportListener:
    """The driver's end: accepts workers' connections and reads their reports, when asked
    (``drain``), from whichever thread asks (one at a time); writes back to one
    (``tell``), named by the number ``drain_from`` gave its reports."""

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self._server.setblocking(False)
        self.address = ChannelAddress(host, self._server.getsockname()[1],
                                      secrets.token_bytes(TOKEN_BYTES))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._numbers = itertools.count(1)
        self.closed = False

    def drain(self, timeout: float = 0.0) -> list[Any]:
        """The reports that have come in, in the order each worker sent them. With a
        ``timeout``, waits up to that long for the first to come."""
        return [message for _, message in self.drain_from(timeout)]

    def drain_from(self, timeout: float = 0.0) -> list[tuple[int, Any]]:
        """As ``drain``, each report with the number of the connection it came on."""
        messages: list[tuple[int, Any]] = []
        with self._lock:
            if self.closed:
                return messages
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._accept(messages)
                else:
                    self._read(key.data, messages)
        return messages

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

    def _accept(self, messages: list[tuple[int, Any]]) -> None:
        """Take the new connections, and what they have sent already (a worker's first
        report may be in before its connection is taken)."""
        while True:
            try:
                connection, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setblocking(False)
            peer = _Peer(connection, next(self._numbers))
            self._peers[peer.number] = peer
            self._selector.register(connection, selectors.EVENT_READ, peer)
            self._read(peer, messages)

    def _read(self, peer: _Peer, messages: list[tuple[int, Any]]) -> None:
        """Read what ``peer`` sent; drop it once it is gone (what it sent before it went,
        a worker's last report before its process ended, is taken first) or untrusted."""
        gone = False
        while not gone:
            try:
                data = peer.connection.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            gone = not data
            peer.pending += data
        if not self._frames(peer, messages) or gone:
            self._drop(peer)

    def _frames(self, peer: _Peer, messages: list[tuple[int, Any]]) -> bool:
        """Take the whole frames out of ``peer.pending``; False for a peer without the
        token."""
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
        for frame in _whole_frames(pending):
            try:
                messages.append((peer.number, pickle.loads(frame)))
            except Exception:  # noqa: BLE001 - a report this driver cannot read: skipped
                continue
        return True

    def _drop(self, peer: _Peer) -> None:
        self._peers.pop(peer.number, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.connection)
        peer.connection.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
