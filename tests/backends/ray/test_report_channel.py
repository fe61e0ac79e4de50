"""The channel a Ray worker sends its reports to the driver on (``report_channel``, and
the driver's end, ``report_listener``), with real sockets and real shared memory, both
ways a worker reaches its driver (a ring on the driver's machine, TCP from another): what
a worker sends arrives whole and in order, a peer without the driver's token is dropped
unread, and a worker whose driver is gone gives up at once. This process plays both the
driver and the worker."""

from __future__ import annotations

import fcntl
import os
import pickle
import socket
import threading
import time

import pytest

from distkernel.backends.ray import report_channel, report_ring
from distkernel.backends.ray.report_channel import ChannelAddress
from distkernel.backends.ray.report_listener import ReportListener

pytestmark = pytest.mark.skipif(not report_ring.available(),
                                reason="report rings need Linux on x86-64")


@pytest.fixture(autouse=True)
def _worker_links_closed():
    yield
    report_channel.close_links()  # this process's worker side


@pytest.fixture(params=["ring", "tcp"])
def channel(request):
    """A listener, and the address a worker uses: the driver's own (a worker on its
    machine: the ring) or its TCP port alone (a worker on another machine)."""
    listener = ReportListener("127.0.0.1")
    address = listener.address if request.param == "ring" else \
        listener.address._replace(local="")
    try:
        yield listener, address
    finally:
        listener.close()


def _ringed(listener: ReportListener) -> int:
    return len(listener.ringed())


def _drain_until(listener: ReportListener, count: int) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += listener.drain(timeout=0.1)
    return got


def test_reports_arrive_whole_and_in_order_also_large_ones(channel):
    listener, address = channel
    sent = [("task", i, "x" * (i * 1000)) for i in range(50)]
    sent.append(("big", 0, "y" * 3_000_000))   # more than the socket's buffer holds
    sent += [("after", i, "z" * (i * 10)) for i in range(3)]   # ... and its ring
    outcomes: list[bool] = []
    worker = threading.Thread(target=lambda: outcomes.extend(
        report_channel.send(address, message) for message in sent))
    worker.start()
    assert _drain_until(listener, len(sent)) == sent
    worker.join()
    assert outcomes == [True] * len(sent)
    assert _ringed(listener) == (address.local != "")


def test_short_reports_read_as_the_pickled_message_would_and_keep_their_place(channel):
    """A call that printed and submitted nothing sends its report packed, not pickled
    (``send_short``): the driver reads the message ``send`` would have carried, in order
    with the pickled ones; a frame that only looks short is skipped, not raised."""
    listener, address = channel
    task_id, node_id = "a1" * 24, "c3" * 28
    report_channel.send(address, ("first", True, ()))
    assert report_channel.send_short(address, task_id, 1.5, 2.25, node_id, 4321, 80, 0)
    frame = report_channel.SHORT + b"not a report"
    report_channel._send_frame(address, report_channel.FRAME_LENGTH.pack(len(frame)) + frame)
    report_channel.send(address, ("last", True, ()))
    assert _drain_until(listener, 3) == [
        ("first", True, ()),
        (task_id, True, (1.5, 2.25, node_id, 4321, "", "", 80, 0)),
        ("last", True, ())]
    assert listener.drain(timeout=0.2) == []


def test_a_full_ring_waits_for_the_driver_and_keeps_the_order(monkeypatch):
    """A ring that goes round its end many times, and fills up between two looks."""
    monkeypatch.setattr(report_ring, "CAPACITY", 4096)
    listener = ReportListener("127.0.0.1")
    try:
        sent = [("task", i, "x" * (i % 300)) for i in range(2000)]
        outcomes: list[bool] = []
        worker = threading.Thread(target=lambda: outcomes.extend(
            report_channel.send(listener.address, message) for message in sent))
        worker.start()
        got: list[object] = []
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.005)
            got += listener.drain()
        worker.join()
        assert got == sent
        assert outcomes == [True] * len(sent)
        [peer] = listener.ringed()
        assert peer.ring.capacity == 4096   # the small ring: it went round, and filled
    finally:
        listener.close()


def test_a_peer_without_the_token_is_dropped_before_anything_is_unpickled():
    listener = ReportListener("127.0.0.1")

    class Trap:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    try:
        intruder = socket.create_connection((listener.address.host, listener.address.port))
        data = pickle.dumps(Trap())
        intruder.sendall(len(data).to_bytes(4, "big") + data)   # no token first
        wrong = ChannelAddress(listener.address.host, listener.address.port,
                               b"0" * report_channel.TOKEN_BYTES)
        report_channel.send(wrong, Trap())                      # the wrong token
        assert report_channel.send(listener.address, "honest")
        assert _drain_until(listener, 1) == ["honest"]
        intruder.settimeout(5)
        assert intruder.recv(1) == b"", "the intruder's connection stays open"
        intruder.close()
    finally:
        listener.close()


def _local_peer(listener: ReportListener, token: bytes, sealed: bool) -> socket.socket:
    """A peer on the driver's Unix socket handing it shared memory with ``token``."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect("\0" + listener.address.local)
    memory = os.memfd_create("distkernel-reports", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(memory, 128 + 4096)
        if sealed:
            fcntl.fcntl(memory, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        socket.send_fds(peer, [len(token).to_bytes(4, "big") + token], [memory])
    finally:
        os.close(memory)
    return peer


@pytest.mark.parametrize("token, sealed", [("wrong", True), ("right", False)],
                         ids=["without-the-token", "memory-that-can-shrink"])
def test_a_local_peer_without_the_token_or_a_sealed_ring_is_dropped(token, sealed):
    """Memory handed over by a peer is mapped only with the token, and only if it cannot
    shrink under the driver (reading it would then crash the driver)."""
    listener = ReportListener("127.0.0.1")
    try:
        given = listener.address.token if token == "right" else b"0" * 32
        intruder = _local_peer(listener, given, sealed)
        assert report_channel.send(listener.address, "honest")
        assert _drain_until(listener, 1) == ["honest"]
        intruder.settimeout(5)
        assert intruder.recv(1) == b"", "the peer's connection stays open"
        intruder.close()
        assert _ringed(listener) == 1   # the honest worker's only
    finally:
        listener.close()


def test_a_worker_whose_driver_is_gone_gives_up_at_once(channel):
    """On TCP the next sends are refused; a ring takes reports until it is full, and then
    the worker sees the driver is gone instead of waiting for room."""
    listener, address = channel
    assert report_channel.send(address, "first")
    assert _drain_until(listener, 1) == ["first"]
    listener.close()
    fits = report_ring.CAPACITY // len(pickle.dumps("lost")) if address.local else 3
    results = [report_channel.send(address, "lost") for _ in range(fits + 1)]
    assert results[-1] is False   # refused: the report is dropped, the call goes on
    assert report_channel.send(address, "x" * report_ring.CAPACITY) is False   # too large


def test_what_a_worker_sent_just_before_its_process_ended_is_read():
    listener = ReportListener("127.0.0.1")
    try:
        worker = socket.create_connection((listener.address.host, listener.address.port))
        token = listener.address.token
        frames = [pickle.dumps(("last words", i)) for i in range(2)]
        worker.sendall(b"".join(len(d).to_bytes(4, "big") + d for d in [token, *frames]))
        worker.close()   # its reports and its end come in one read
        assert _drain_until(listener, 2) == [("last words", 0), ("last words", 1)]
    finally:
        listener.close()


def test_the_driver_writes_back_to_the_worker_a_report_came_from(channel):
    listener, address = channel
    assert report_channel.requests(address) == []   # no connection yet
    assert report_channel.send(address, "report")
    deadline = time.monotonic() + 10
    got: list[tuple[int, object]] = []
    while not got and time.monotonic() < deadline:
        got = listener.drain_from(timeout=0.1)
    [(sender, message)] = got
    assert message == "report"
    requests = [("cancel", i, "z" * (i * 20_000)) for i in range(5)]   # some in parts
    assert all(listener.tell(sender, request) for request in requests)
    assert not listener.tell(sender + 1, "nobody")
    taken: list[object] = []
    while len(taken) < len(requests) and time.monotonic() < deadline:
        taken += report_channel.requests(address)
        time.sleep(0.01)
    assert taken == requests
    looking = threading.Thread(target=report_channel.requests, args=(address,))
    looking.start()   # nothing more has come: it returns at once, it does not wait
    looking.join(timeout=report_channel.SEND_TIMEOUT / 2)
    assert not looking.is_alive(), "requests() waited for the driver to write"
