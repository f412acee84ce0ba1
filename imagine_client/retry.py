"""When a call is tried again: a bounded number of attempts, exponential backoff with jitter, and
the server's Retry-After when it gives one."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Limits that last until the day turns: waiting inside one call does not get past them.
UNTIL_TOMORROW = frozenset({"daily_image_cap", "daily_spend_cap", "global_spend_cap"})
# Failures before the request left this machine: the server cannot have acted on it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures that may have happened after the server acted: only a replayable call is sent again.
MAYBE_SENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class Replay(enum.Enum):
    """Whether a call may be sent again after its connection failed."""

    ALWAYS = "always"  # a read, or a submit the server dedupes by its idempotency key
    UNSENT = "unsent"  # only when the request cannot have reached the server


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a call is tried in all and how long to wait between tries.

    The n-th wait is `backoff * 2**n`, at most `cap`, with jitter (each wait is drawn from its
    upper half) so that many clients do not come back at once. A Retry-After up to
    `max_retry_after` is waited out as given; a longer one ends the call at once with its
    error (whose `retry_after` says when to come back).
    """

    attempts: int = 4
    backoff: float = 0.5
    cap: float = 8.0
    max_retry_after: float = 60.0
    jitter: bool = True

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0 for the first)."""
        wait: float = min(self.cap, self.backoff * 2.0**retry)
        return wait * random.uniform(0.5, 1.0) if self.jitter else wait

    def after_answer(self, response: httpx.Response, retry: int) -> float | None:
        """The wait before trying again after this answer, or None to keep it."""
        if response.status_code not in RETRY_STATUSES or retry + 1 >= self.attempts:
            return None
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        if asked is not None:
            return asked if asked <= self.max_retry_after else None
        if response.status_code == 429 and _error_code(response) in UNTIL_TOMORROW:
            return None
        return self.delay(retry)

    def after_failure(self, exc: httpx.TransportError, retry: int, replay: Replay) -> float | None:
        """The wait before trying again after the connection failed, or None to give up."""
        if retry + 1 >= self.attempts:
            return None
        if isinstance(exc, NOT_SENT) or (replay is Replay.ALWAYS and isinstance(exc, MAYBE_SENT)):
            return self.delay(retry)
        return None
