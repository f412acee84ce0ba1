"""The clients' transport: one retry of an idempotent request on a connection closed unanswered."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import h11
import httpx
import pytest

from pipeline.http import RetryOnDisconnectTransport

pytestmark = pytest.mark.unit


def _disconnected() -> Exception:
    return httpx.RemoteProtocolError("Server disconnected without sending a response.")


def _reset() -> Exception:
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as cause:
        try:
            raise httpx.ReadError("[Errno 104] Connection reset by peer") from cause
        except httpx.ReadError as exc:
            return exc


def _broken_pipe() -> Exception:
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError as cause:
        try:
            raise httpx.WriteError("[Errno 32] Broken pipe") from cause
        except httpx.WriteError as exc:
            return exc


def _malformed() -> Exception:
    try:
        raise h11.RemoteProtocolError("illegal status line")
    except h11.RemoteProtocolError as cause:
        try:
            raise httpx.RemoteProtocolError("illegal status line") from cause
        except httpx.RemoteProtocolError as exc:
            return exc


class Server:
    """Fails the first `failures` requests with the error `fail` builds, then answers 200."""

    def __init__(self, fail: Callable[[], Exception], failures: int = 1) -> None:
        self.fail = fail
        self.failures = failures
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        if len(self.bodies) <= self.failures:
            raise self.fail()
        return httpx.Response(200, json={"attempt": len(self.bodies)})

    def client(self) -> httpx.Client:
        transport = RetryOnDisconnectTransport(httpx.MockTransport(self))
        return httpx.Client(base_url="http://receiver.test", transport=transport)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
@pytest.mark.parametrize("fail", [_disconnected, _reset, _broken_pipe])
def test_an_idempotent_request_is_sent_again_once(
    method: str, fail: Callable[[], Exception]
) -> None:
    server = Server(fail)
    with server.client() as client:
        response = client.request(method, "/v1/jobs/j1")
    assert response.status_code == 200
    assert len(server.bodies) == 2


def test_a_second_disconnect_reaches_the_caller() -> None:
    server = Server(_disconnected, failures=2)
    with server.client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/v1/jobs/j1")
    assert len(server.bodies) == 2


def test_a_post_with_an_idempotency_key_is_sent_again_with_the_same_body() -> None:
    server = Server(_disconnected)
    with server.client() as client:
        response = client.post(
            "/v1/jobs", json={"positivePrompt": "a lighthouse"}, headers={"Idempotency-Key": "k1"}
        )
    assert response.json() == {"attempt": 2}
    assert server.bodies[0] == server.bodies[1] == b'{"positivePrompt":"a lighthouse"}'


@pytest.mark.parametrize("fail", [_disconnected, _reset])
def test_a_post_without_an_idempotency_key_is_not_sent_again(fail: Callable[[], Exception]) -> None:
    server = Server(fail)
    with server.client() as client, pytest.raises(httpx.TransportError):
        client.post("/v1/jobs", json={"positivePrompt": "a lighthouse"})
    assert len(server.bodies) == 1


def test_a_streamed_body_is_not_sent_again() -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"positivePrompt":'
        yield b'"a lighthouse"}'

    server = Server(_disconnected)
    with server.client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.put("/v1/things/1", content=chunks())
    assert len(server.bodies) == 1


@pytest.mark.parametrize(
    "fail",
    [
        _malformed,
        lambda: httpx.ReadTimeout("timed out"),
        lambda: httpx.ConnectError("connection refused"),
        lambda: httpx.ReadError("read failed"),
    ],
)
def test_other_failures_are_not_retried(fail: Callable[[], Exception]) -> None:
    server = Server(fail)
    with server.client() as client, pytest.raises(httpx.TransportError):
        client.get("/v1/jobs/j1")
    assert len(server.bodies) == 1


def test_an_error_response_is_an_answer_and_is_not_retried() -> None:
    calls: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    transport = RetryOnDisconnectTransport(httpx.MockTransport(unavailable))
    with httpx.Client(transport=transport) as client:
        assert client.get("http://receiver.test/healthz").status_code == 503
    assert len(calls) == 1
