"""The messages between driver and workers: one class per kind, cheap to make and pickle."""

from __future__ import annotations

import pickle

import pytest

from distkernel.backends.local.requests import RequestHandler
from distkernel.core.protocol import (
    ActorOptions,
    AllocateRequest,
    CancelRequest,
    CreateActorRequest,
    GetActorRequest,
    GetRequest,
    InlineValue,
    KillActorRequest,
    Place,
    PutRequest,
    ReleaseRequest,
    Request,
    SubmitRequest,
    TaskSpec,
    WaitRequest,
)

SPEC = TaskSpec("t1", "f", "task", "h1", InlineValue(b"args"), (), ("r1",))
ACTOR = ActorOptions("Counter", (("add", 1),), name="counter")
REQUESTS = [
    GetRequest(1, ("a", "b")),
    WaitRequest(2, ("a", "b"), 1, 0.5),
    PutRequest(3, "a", InlineValue(b"value")),
    SubmitRequest(SPEC, b"function"),
    CreateActorRequest(4, SPEC, None, ACTOR),
    KillActorRequest("actor", True),
    CancelRequest("a", False),
    GetActorRequest(5, "counter", None),
    AllocateRequest(6, 1 << 20),
    ReleaseRequest(Place("segment", 0, 4096)),
]


def test_every_request_kind_is_in_the_table():
    kinds = {type(request) for request in REQUESTS}
    assert kinds == set(Request.__subclasses__())


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_request_pickles_as_its_class_and_fields(request_):
    assert request_.__reduce__()[0] is type(request_)
    assert pickle.loads(pickle.dumps(request_)) == request_
    assert not hasattr(request_, "__dict__")  # slotted, as every message


def test_the_driver_handles_every_request_kind():
    handler = RequestHandler(None)  # type: ignore[arg-type]
    assert set(handler._handlers) == set(Request.__subclasses__())
    with pytest.raises(TypeError, match="unknown kind"):
        handler.handle(1, Request())


def test_only_a_named_actor_waits_for_its_creation():
    unnamed = ActorOptions("Counter", (("add", 1),))
    assert CreateActorRequest(4, SPEC, None, ACTOR).needs_reply
    assert not CreateActorRequest(0, SPEC, None, unnamed).needs_reply

