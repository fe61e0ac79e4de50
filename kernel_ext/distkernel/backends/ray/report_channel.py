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

Workers import this module: it needs the standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
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


def _connect(address: ChannelAddress) -> socket.socket:
    connection = socket.create_connection((address.host, address.port), timeout=SEND_TIMEOUT)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sendall(_LENGTH.pack(len(address.token)) + address.token)
    return connection


# -- the driver's side ---------------------------------------------------------------------------

class _Peer:
    """A worker's connection, with what has come of its current frame."""

    __slots__ = ("connection", "pending", "trusted")

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.pending = bytearray()
        self.trusted = False


class ReportListener:
    """The driver's end: accepts workers' connections and reads their reports, when asked
    (``drain``), from whichever thread asks (one at a time)."""

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self._server.setblocking(False)
        self.address = ChannelAddress(host, self._server.getsockname()[1],
                                      secrets.token_bytes(TOKEN_BYTES))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self.closed = False

    def drain(self, timeout: float = 0.0) -> list[Any]:
        """The reports that have come in, in the order each worker sent them. With a
        ``timeout``, waits up to that long for the first to come."""
        messages: list[Any] = []
        with self._lock:
            if self.closed:
                return messages
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._accept(messages)
                else:
                    self._read(key.data, messages)
        return messages

    def _accept(self, messages: list[Any]) -> None:
        """Take the new connections, and what they have sent already (a worker's first
        report may be in before its connection is taken)."""
        while True:
            try:
                connection, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setblocking(False)
            peer = _Peer(connection)
            self._selector.register(connection, selectors.EVENT_READ, peer)
            self._read(peer, messages)

    def _read(self, peer: _Peer, messages: list[Any]) -> None:
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

    def _frames(self, peer: _Peer, messages: list[Any]) -> bool:
        """Take the whole frames out of ``peer.pending``; False for a peer without the
        token."""
        pending, at = peer.pending, 0
        while len(pending) - at >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(pending, at)
            if not peer.trusted and length != TOKEN_BYTES:
                return False
            end = at + _LENGTH.size + length
            if len(pending) < end:
                break
            frame = bytes(pending[at + _LENGTH.size:end])
            at = end
            if not peer.trusted:
                if not hmac.compare_digest(frame, self.address.token):
                    return False
                peer.trusted = True
                continue
            try:
                messages.append(pickle.loads(frame))
            except Exception:  # noqa: BLE001 - a report this driver cannot read: skipped
                continue
        del pending[:at]
        return True

    def _drop(self, peer: _Peer) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.connection)
        peer.connection.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
