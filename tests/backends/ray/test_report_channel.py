"""The channel a Ray worker sends its reports to the driver on (``report_channel``), with
real sockets: what a worker sends arrives whole and in order, a peer without the driver's
token is dropped unread, and a worker whose driver is gone gives up at once."""

from __future__ import annotations

import pickle
import socket
import threading
import time

from distkernel.backends.ray import report_channel
from distkernel.backends.ray.report_channel import ChannelAddress, ReportListener


def _drain_until(listener: ReportListener, count: int) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += listener.drain(timeout=0.1)
    return got


def test_reports_arrive_whole_and_in_order_also_large_ones():
    listener = ReportListener("127.0.0.1")
    try:
        sent = [("task", i, "x" * (i * 1000)) for i in range(50)]
        sent.append(("big", 0, "y" * 3_000_000))   # more than the socket's buffer holds
        outcomes: list[bool] = []
        worker = threading.Thread(target=lambda: outcomes.extend(
            report_channel.send(listener.address, message) for message in sent))
        worker.start()
        assert _drain_until(listener, len(sent)) == sent
        worker.join()
        assert outcomes == [True] * len(sent)
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


def test_a_worker_whose_driver_is_gone_gives_up_at_once():
    listener = ReportListener("127.0.0.1")
    address = listener.address
    assert report_channel.send(address, "first")
    assert _drain_until(listener, 1) == ["first"]
    listener.close()
    results = [report_channel.send(address, "lost") for _ in range(3)]
    assert results[-1] is False   # refused: the report is dropped, the call goes on


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


def test_the_driver_writes_back_to_the_worker_a_report_came_from():
    listener = ReportListener("127.0.0.1")
    try:
        assert report_channel.requests(listener.address) == []   # no connection yet
        assert report_channel.send(listener.address, "report")
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
            taken += report_channel.requests(listener.address)
            time.sleep(0.01)
        assert taken == requests
        looking = threading.Thread(target=report_channel.requests, args=(listener.address,))
        looking.start()   # nothing more has come: it returns at once, it does not wait
        looking.join(timeout=report_channel.SEND_TIMEOUT / 2)
        assert not looking.is_alive(), "requests() waited for the driver to write"
    finally:
        listener.close()
