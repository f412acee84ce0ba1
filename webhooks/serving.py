"""Gunicorn hooks of the receiver: a request body arrives by a deadline, or the connection ends."""

from __future__ import annotations

import _socket
import ipaddress
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import gevent
from gevent.resolver.thread import Resolver as ThreadResolver
from werkzeug.exceptions import RequestTimeout

T = TypeVar("T")
# What is left of a body the application did not read is drained, so the connection can serve
# its next request, up to this much; past it closing is cheaper than reading.
DRAIN_MAX_BYTES = 64 * 1024


class _Body(Protocol):
    def read(self, size: int | None = ...) -> bytes: ...
    def readline(self, size: int | None = ...) -> bytes: ...


class BodyTimeout(RequestTimeout):
    """The request body did not arrive by its deadline: answered 408, the connection closes."""

    description = "the request body did not arrive in time"


class DeadlineBody:
    """A request body that must be read completely within `seconds` of the request's headers.

    Under gevent a slow client costs a greenlet, not a thread, but it must still not hold its
    connection forever: gevent's keep-alive timeout bounds the headers, this bounds the body, which
    a client trickling one byte at a time would otherwise stretch without end (an idle-read timeout
    never fires on such a client). Reads past the deadline raise BodyTimeout and call on_expiry.
    """

    def __init__(self, body: _Body, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._body = body
        self._deadline = time.monotonic() + seconds
        self._on_expiry = on_expiry
        self.expired = False
        # Once a read has come back empty the body has ended: later reads (werkzeug's last
        # read, the drain after the response) answer at once, with no timer armed for them.
        self._ended = False

    def _by_deadline(self, read: Callable[[], T]) -> T:
        remaining = self._deadline - time.monotonic()
        if remaining > 0 and not self.expired:
            # False: the timeout ends the block silently instead of raising into the read.
            with gevent.Timeout(remaining, False):
                return read()
        self.expired = True
        self._on_expiry()
        raise BodyTimeout()

    def _until_end(self, chunk: bytes, whole: bool) -> bytes:
        self._ended = whole or not chunk
        return chunk

    def read(self, size: int | None = None) -> bytes:
        if self._ended:
            return b""
        whole = size is None or size < 0
        return self._until_end(self._by_deadline(lambda: self._body.read(size)), whole)

    def readline(self, size: int | None = None) -> bytes:
        if self._ended:
            return b""
        return self._until_end(self._by_deadline(lambda: self._body.readline(size)), False)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def discard_rest(self) -> bool:
        """Drop what the application left unread, by the same deadline; whether all of it went."""
        if self.expired:
            return False
        drained = 0
        try:
            while chunk := self.read(8192):
                drained += len(chunk)
                if drained > DRAIN_MAX_BYTES:
                    return False
        except Exception:  # a timeout, a reset, a malformed chunk: the next request's start is lost
            return False
        return True


def _close_after(req: Any) -> Callable[[], None]:
    def close() -> None:
        req.must_close = True  # gunicorn answers with Connection: close and ends the connection

    return close


def bound_request_body(req: Any, seconds: float) -> None:
    """gunicorn pre_request: give the request's body (its wsgi.input) a deadline."""
    if req.body is not None:
        req.body = DeadlineBody(req.body, seconds, _close_after(req))


def finish_request_body(req: Any) -> None:
    """gunicorn post_request: drain the unread body by its deadline, or close the connection."""
    body = req.body
    if isinstance(body, DeadlineBody) and not body.discard_rest():
        req.must_close = True


def _is_address(host: Any) -> bool:
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class LiteralAddressResolver(ThreadResolver):  # type: ignore[misc]  # gevent is untyped
    """gevent's default resolver, except for an IP address, which needs no lookup: it never goes
    through the resolver's thread pool. Every connection the receiver opens to an S3 server at an
    address (the local stack's closes its connections after each request) was handed to a
    thread and back, a quarter of the receiver's CPU in a profile of the 400-image bench."""

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_address(host):
            return _socket.getaddrinfo(host, port, *args, **kwargs)
        return super().getaddrinfo(host, port, *args, **kwargs)
