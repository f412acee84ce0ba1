"""The errors the jobs API answers, one class per error `code`, and the client's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ImagineError(Exception):
    """An error answered by the jobs API (`{code, status, message, errors}`) or met on the way.

    `status` is the HTTP status (0 when no answer came); `retry_after` the seconds the server
    asked to wait (its Retry-After header), when it said.
    """

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 0,
        errors: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.status = status
        self.errors: dict[str, Any] = dict(errors or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class BadRequest(ImagineError):
    code = "bad_request"


class Unauthorized(ImagineError):
    code = "unauthorized"


class Forbidden(ImagineError):
    code = "forbidden"


class NotFound(ImagineError):
    code = "not_found"


class MethodNotAllowed(ImagineError):
    code = "method_not_allowed"


class Conflict(ImagineError):
    code = "conflict"


class PayloadTooLarge(ImagineError):
    code = "payload_too_large"


class UnsupportedMediaType(ImagineError):
    code = "unsupported_media_type"


class ValidationFailed(ImagineError):
    """The request failed validation: `errors` names each field and what is wrong with it."""

    code = "validation_failed"


class ImageRejected(ImagineError):
    code = "image_rejected"


class LimitReached(ImagineError):
    """A limit on what the tenant or the service may do stops the call (HTTP 429)."""

    code = "limit_reached"


class RateLimited(LimitReached):
    code = "rate_limited"


class DailyImageCapReached(LimitReached):
    code = "daily_image_cap"


class DailySpendCapReached(LimitReached):
    code = "daily_spend_cap"


class GlobalSpendCapReached(LimitReached):
    code = "global_spend_cap"


class InternalError(ImagineError):
    code = "internal"


class ProviderError(ImagineError):
    code = "provider_error"


class Unavailable(ImagineError):
    code = "unavailable"


class SubmissionsPaused(Unavailable):
    code = "submissions_paused"


class StorageError(ImagineError):
    code = "storage_error"


class ConnectionFailed(ImagineError):
    """No answer from the server: it could not be reached, or the connection broke."""

    code = "connection_failed"


class InvalidResponse(ImagineError):
    """The server answered something that is not what the jobs API sends."""

    code = "invalid_response"


class DownloadFailed(ImagineError):
    """An image's bytes could not be fetched whole."""

    code = "download_failed"


class WaitTimeout(ImagineError):
    """A job had not ended when `wait` gave up; `job` is how it looked last."""

    code = "wait_timeout"

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


_BY_CODE: dict[str, type[ImagineError]] = {
    cls.code: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
        PayloadTooLarge, UnsupportedMediaType, ValidationFailed, ImageRejected, RateLimited,
        DailyImageCapReached, DailySpendCapReached, GlobalSpendCapReached, InternalError,
        ProviderError, Unavailable, SubmissionsPaused, StorageError,
    )
}  # fmt: skip
# Names the server's generic HTTP errors take (werkzeug's names, lowercased).
_BY_CODE.update(
    request_entity_too_large=PayloadTooLarge,
    content_too_large=PayloadTooLarge,
    too_many_requests=RateLimited,
    internal_server_error=InternalError,
    service_unavailable=Unavailable,
)
# The code an answer without our error body (a proxy's page, an S3 error) is given.
_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def error_class(code: str) -> type[ImagineError]:
    """The class of an error code; ImagineError itself for a code this client does not know."""
    return _BY_CODE.get(code, ImagineError)


def error_from_answer(
    status: int, body: Any, *, text: str = "", retry_after: float | None = None
) -> ImagineError:
    """The error an HTTP answer means: from its `{code, status, message, errors}` body, else
    from its status alone."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code: str = body["code"]
        message = body.get("message")
        errors = body.get("errors")
        return error_class(code)(
            message if isinstance(message, str) else code,
            code=code,
            status=status,
            errors=errors if isinstance(errors, dict) else None,
            retry_after=retry_after,
        )
    code = _BY_STATUS.get(status, f"http_{status}")
    message = f"HTTP {status}" + (f": {text.strip()[:200]}" if text.strip() else "")
    return error_class(code)(message, code=code, status=status, retry_after=retry_after)
