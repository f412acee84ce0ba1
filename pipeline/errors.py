"""Errors of the domain, each mapped to one HTTP status and one machine-readable code."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every error the pipeline reports to a caller.

    `retryable` says whether the same call may succeed later: the one question a worker asks
    (workers/base.py) before it retries, `retry_after` how long the failing side asked to wait.
    """

    code = "internal"
    status = 500
    retry_after: float | None = None

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}

    @property
    def retryable(self) -> bool:
        return False


class Retryable(PipelineError):
    """A transient failure of something outside the pipeline: try again later.

    With `backoff` off the caller waits exactly `retry_after` (a poll, not a failure)."""

    code = "unavailable"
    status = 503

    def __init__(
        self, message: str, *, retry_after: float | None = None, backoff: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.backoff = backoff

    @property
    def retryable(self) -> bool:
        return True


class CallbackUnavailable(Retryable):
    """A job's callback URL did not answer, or answered 408, 429 or 5xx."""


class ImageFetchUnavailable(Retryable):
    """The provider's hosted copy of an image could not be fetched for now."""


class UploadPending(Retryable):
    """The provider's upload has not landed yet: look again in `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after, backoff=False)


class LimitExceeded(PipelineError):
    """A limit on what a caller may ask stops this request: 429, with `code` naming the limit
    and `retry_after` when it frees up."""

    status = 429

    def __init__(
        self,
        message: str,
        *,
        code: str = "rate_limited",
        retry_after: float | None = None,
        errors: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, errors)
        self.code = code
        self.retry_after = retry_after


class BodyInvalid(PipelineError):
    """The body is not JSON the server will read (malformed, or nested too deep)."""

    code = "bad_request"
    status = 400


class RequestInvalid(PipelineError):
    code = "validation_failed"
    status = 422


class NotFound(PipelineError):
    code = "not_found"
    status = 404


class Conflict(PipelineError):
    code = "conflict"
    status = 409


class Unauthorized(PipelineError):
    code = "unauthorized"
    status = 401


class ProviderError(PipelineError):
    """Runware refused or failed a request; `kind` says what the pipeline should do about it."""

    code = "provider_error"
    status = 502

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    ACCOUNT = "account"
    CONFLICT = "conflict"
    MODEL = "model"  # the model is refused: pause that model only
    NOT_FOUND = "not_found"  # the provider does not know the task: it may still have run
    UNKNOWN = "unknown"  # a code the error table does not know

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        provider_code: str | None = None,
        parameter: Any = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        task_uuid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.provider_code = provider_code
        self.parameter = parameter
        self.http_status = http_status
        self.retry_after = retry_after
        self.task_uuid = task_uuid

    @property
    def retryable(self) -> bool:
        return self.kind == self.TRANSIENT

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind!r}, code={self.provider_code!r}, "
            f"status={self.http_status!r}, message={self.message!r})"
        )


class StorageError(PipelineError):
    """S3 failed; transient errors are worth a retry, others are not."""

    code = "storage_error"
    status = 503

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient

    @property
    def retryable(self) -> bool:
        return self.transient


class ObjectMissing(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no object at {key}", transient=True)
        self.key = key


class ImageRejected(PipelineError):
    """An image failed verification (format, size, bytes)."""

    code = "image_rejected"
    status = 422


class DependencyUnavailable(Retryable):
    """Redis or S3 cannot be reached: 503 with Retry-After, naming the dependency and where it
    was tried (never a password or a URL's credentials)."""

    code = "dependency_unavailable"

    def __init__(self, dependency: str, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.dependency = dependency
        self.errors = {"dependency": dependency}


class StorageUnavailable(StorageError):
    """S3 cannot be reached (no connection, or no answer in time): a transient storage error
    that a caller sees as 503 `dependency_unavailable` with Retry-After."""

    code = "dependency_unavailable"

    def __init__(self, message: str, *, cause: str, reason: str, address: str) -> None:
        super().__init__(message, transient=True)
        self.retry_after = 1.0
        self.errors = {"dependency": "s3"}
        self.cause = cause
        self.reason = reason
        self.address = address
