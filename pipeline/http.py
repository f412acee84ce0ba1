"""An httpx transport that retries an idempotent request once on a connection closed unanswered."""

from __future__ import annotations

import httpx

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def closed_before_response(exc: httpx.TransportError) -> bool:
    """Whether exc means the server closed or reset the connection before sending any response.

    That is how a keep-alive connection the server has just closed fails the next request: the
    request may never have reached the application, and a fresh connection usually succeeds.
    """
    chain = _causes(exc)
    if isinstance(exc, httpx.RemoteProtocolError):
        # "Server disconnected without sending a response"; a malformed response instead comes
        # from h11, and there bytes did arrive.
        return not any(type(cause).__module__.startswith("h11") for cause in chain)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return any(isinstance(cause, (ConnectionResetError, BrokenPipeError)) for cause in chain)
    return False


def may_retry(request: httpx.Request) -> bool:
    """Idempotent by method, or a POST that carries an Idempotency-Key; with a replayable body."""
    idempotent = request.method in IDEMPOTENT_METHODS or (
        request.method == "POST" and "Idempotency-Key" in request.headers
    )
    return idempotent and isinstance(request.stream, httpx.ByteStream)


class RetryOnDisconnectTransport(httpx.BaseTransport):
    """Sends through `transport`; once more if an idempotent request's connection closed unanswered.

    A server closes an idle keep-alive connection when it likes; a request sent at that moment
    fails without an answer, although nothing happened. Retrying it once on a new connection is
    safe for idempotent requests only: a POST needs an Idempotency-Key for the server to dedupe.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self.retries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        retryable = may_retry(request)  # before sending: a streamed body is gone once sent
        try:
            return self._transport.handle_request(request)
        except httpx.TransportError as exc:
            if not (retryable and closed_before_response(exc)):
                raise
        self.retries += 1
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()
