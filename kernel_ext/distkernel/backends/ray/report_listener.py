"""The driver's end of the report channel (``report_channel``): it accepts the workers'
connections, checks each one's token before anything of it is read, maps the rings that
workers on its machine hand it, and takes their reports when asked.

A worker on the driver's machine connects on an abstract Unix socket (no file is left
behind) and sends its ring's descriptor with its token; one elsewhere connects on TCP.
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
from typing import Any

from distkernel.backends.ray import report_ring
from distkernel.backends.ray.report_channel import (
    FRAME_LENGTH,
    ON_SOCKET,
    SEND_TIMEOUT,
    SHORT,
    TOKEN_BYTES,
    ChannelAddress,
    machine_id,
    read_short,
    whole_frames,
)


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
                peer.connection.sendall(FRAME_LENGTH.pack(len(data)) + data)
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
            if len(pending) >= FRAME_LENGTH.size and \
                    FRAME_LENGTH.unpack_from(pending)[0] != TOKEN_BYTES:
                return False
            token = whole_frames(pending, limit=1)
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
            messages.extend(_messages(peer.number, whole_frames(pending)))
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
                (length,) = FRAME_LENGTH.unpack_from(data, at)
                at += FRAME_LENGTH.size
                if length == ON_SOCKET:
                    frames.append(_frame_from_socket(peer))
                    continue
                if at + length > len(data):
                    msg = "a frame cut short in a report ring"
                    raise ValueError(msg)
                frames.append(data[at:at + length])
                at += length
        except (ValueError, OSError, struct.error):
            self._drop(peer)
        messages.extend(_messages(peer.number, frames))

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
        whole = whole_frames(peer.pending, limit=1)
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


def _messages(number: int, frames: list[bytes]) -> list[tuple[int, Any]]:
    """The messages in ``frames`` (pickled, or short reports), each with ``number``."""
    messages = []
    for frame in frames:
        try:
            message = read_short(frame) if frame[:1] == SHORT else pickle.loads(frame)
        except Exception:  # noqa: BLE001 - a report this driver cannot read: skipped
            continue
        messages.append((number, message))
    return messages
