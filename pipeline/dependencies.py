"""Redis and S3 out of reach, described once: where they were tried and why it failed."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import redis
from botocore import exceptions as boto

from pipeline.config import Settings
from pipeline.errors import DependencyUnavailable, StorageUnavailable

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)
# No connection, or no answer in time: S3 is out of reach, not refusing the request.
S3_ERRORS = (boto.ConnectionError, boto.ConnectionClosedError, boto.ReadTimeoutError)

# "Error 111 connecting to 127.0.0.1:6379. Connection refused." -> "Connection refused"
_REDIS_CONNECT = re.compile(r"^Error \S+ connecting to \S+?\.\s+(?P<why>.+?)\.?$")
# urllib3's "...: [Errno 111] Connection refused" inside botocore's error
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*(?P<why>[^'\")]+)")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "http": 80, "https": 443}


def address(url: str | None) -> str:
    """host:port of a URL, without its credentials, path or query."""
    if not url:
        return "the default endpoint"
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    literal = f"[{host}]" if ":" in host else host
    return literal if port is None else f"{literal}:{port}"


def redis_reason(exc: Exception) -> str:
    text = str(exc).strip()
    match = _REDIS_CONNECT.match(text)
    return (match.group("why") if match else text.rstrip(".")) or type(exc).__name__


def redis_unavailable(exc: Exception, settings: Settings) -> DependencyUnavailable:
    where = address(settings.redis_url)
    return DependencyUnavailable("redis", f"redis unreachable at {where}: {redis_reason(exc)}")


def s3_unavailable(action: str, key: str, exc: Exception) -> StorageUnavailable:
    """The StorageError of an S3 call that could not reach S3, naming the endpoint's host:port."""
    kwargs = getattr(exc, "kwargs", {}) or {}
    where = address(kwargs.get("endpoint_url"))
    match = _ERRNO.search(str(kwargs.get("error") or ""))
    reason = match.group("why").strip() if match else _timeout_reason(exc)
    return StorageUnavailable(
        f"s3 unreachable at {where}: {reason} (S3 {action} of {key})",
        cause=type(exc).__name__,
        reason=reason,
        address=where,
    )


def _timeout_reason(exc: Exception) -> str:
    if isinstance(exc, boto.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, boto.ReadTimeoutError):
        return "read timed out"
    if isinstance(exc, boto.ConnectionClosedError):
        return "connection closed"
    return type(exc).__name__


def readiness(exc: Exception, settings: Settings) -> str:
    """A /readyz check's text for a failure: the error's type, why, and where."""
    if isinstance(exc, StorageUnavailable):
        return f"error: {exc.cause}: {exc.reason} ({exc.address})"
    if isinstance(exc, REDIS_ERRORS):
        return f"error: {type(exc).__name__}: {redis_reason(exc)} ({address(settings.redis_url)})"
    message = getattr(exc, "message", None)
    return f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}"
