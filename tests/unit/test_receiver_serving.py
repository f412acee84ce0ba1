"""The receiver's gunicorn hooks: a request body arrives by its deadline, or the connection ends."""

from __future__ import annotations

import io
import socket
from dataclasses import dataclass, field

import gevent
import pytest

from tests.unit.conftest import FakeService, make_client, url
from webhooks.serving import (
    DRAIN_MAX_BYTES,
    BodyTimeout,
    DeadlineBody,
    LiteralAddressResolver,
    bound_request_body,
    finish_request_body,
)

pytestmark = pytest.mark.unit


class TricklingBody:
    """Gives `arrived` at once, then a byte every `gap` seconds (gevent time) without end."""

    def __init__(self, arrived: bytes = b"", gap: float = 10.0) -> None:
        self.arrived = io.BytesIO(arrived)
        self.gap = gap

    def read(self, size: int | None = None) -> bytes:
        data = self.arrived.read(size if size is not None else -1)
        if data:
            return data
        gevent.sleep(self.gap)
        return b" "

    def readline(self, size: int | None = None) -> bytes:
        return self.read(1)


@dataclass
class Request:
    """What the hooks see of gunicorn's request."""

    body: object
    must_close: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def test_a_body_that_arrives_in_time_reads_as_it_is() -> None:
    body = DeadlineBody(io.BytesIO(b'{"a":1}\n{"b":2}\n'), 5.0, lambda: None)
    assert body.readline() == b'{"a":1}\n'
    assert list(body) == [b'{"b":2}\n']
    assert body.read() == b""
    assert body.discard_rest() is True


def test_a_trickling_body_times_out_and_closes_the_connection() -> None:
    req = Request(TricklingBody(b"{", gap=10.0))
    bound_request_body(req, 0.05)
    assert isinstance(req.body, DeadlineBody)
    assert req.body.read(1) == b"{"
    with pytest.raises(BodyTimeout) as caught:
        req.body.read(100)
    assert caught.value.code == 408
    assert req.must_close is True
    finish_request_body(req)
    assert req.must_close is True


def test_a_body_left_unread_is_drained_and_the_connection_kept() -> None:
    req = Request(io.BytesIO(b"x" * 1000))
    bound_request_body(req, 5.0)
    finish_request_body(req)
    assert req.must_close is False


def test_an_unread_body_that_trickles_closes_the_connection_at_the_deadline() -> None:
    req = Request(TricklingBody(gap=0.01))
    bound_request_body(req, 0.1)
    finish_request_body(req)
    assert req.must_close is True


def test_a_large_unread_body_closes_the_connection_instead_of_being_read() -> None:
    req = Request(io.BytesIO(b"x" * (DRAIN_MAX_BYTES + 10_000)))
    bound_request_body(req, 5.0)
    finish_request_body(req)
    assert req.must_close is True


def test_a_webhook_body_past_its_deadline_gets_a_408_in_the_error_shape() -> None:
    closed: list[bool] = []
    stream = DeadlineBody(TricklingBody(b'{"data": [', gap=10.0), 0.05, lambda: closed.append(True))
    answer = make_client(FakeService()).post(
        url(),
        content_type="application/json",
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": "1000"},
    )
    assert answer.status_code == 408
    assert answer.json is not None
    assert set(answer.json) == {"code", "status", "message", "errors"}
    assert answer.json["status"] == 408
    assert closed == [True]


class RefusingPool:
    """A resolver thread pool that must not be used."""

    def apply(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("an IP address went to the resolver's threads")


def test_an_ip_address_is_resolved_without_the_resolver_threads() -> None:
    resolver = LiteralAddressResolver()
    resolver.pool = RefusingPool()

    answer = resolver.getaddrinfo("127.0.0.1", 9000, 0, socket.SOCK_STREAM)

    assert [item[4] for item in answer] == [("127.0.0.1", 9000)]
    with pytest.raises(AssertionError, match="resolver's threads"):
        resolver.getaddrinfo("localhost", 9000)


class CountingBody(io.BytesIO):
    """A body that counts the reads that reach it."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def test_reads_after_the_body_ended_do_not_reach_it() -> None:
    inner = CountingBody(b'{"a":1}')
    req = Request(inner)
    bound_request_body(req, 5.0)
    assert isinstance(req.body, DeadlineBody)
    assert req.body.read(100) == b'{"a":1}'
    assert req.body.read(100) == b""
    assert req.body.read() == b""
    finish_request_body(req)
    assert inner.reads == 2
    assert req.must_close is False


def test_a_whole_read_ends_the_body() -> None:
    inner = CountingBody(b"abc")
    body = DeadlineBody(inner, 5.0, lambda: None)
    assert body.read() == b"abc"
    assert body.read(10) == b""
    assert body.discard_rest() is True
    assert inner.reads == 1
