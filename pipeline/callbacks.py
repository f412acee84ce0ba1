"""Callbacks: an ended job POSTed to its callback URL, always signed (Standard Webhooks), to
the address checked against SSRF at send time."""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC

import httpx

from pipeline import clock, metrics
from pipeline.callback_log import CallbackLog, log_for
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.documents import job_view, presigner
from pipeline.errors import CallbackUnavailable, Conflict, NotFound
from pipeline.models import CallbackOutcome, Job
from pipeline.signing import sign_callback
from pipeline.urls import UnsafeURL, check_outbound_url, pinned_request

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT = 10.0
EVENT_TYPE = "job.ended"
# The first retry comes a few seconds after the event; later waits grow with the time since it.
FIRST_RETRY_SECONDS = 5.0
# The longest wait between two attempts; also kept below half the broker's visibility timeout,
# past which Redis hands a delayed, unacknowledged retry to a second worker.
BACKOFF_CAP_SECONDS = 1800.0
RETRYABLE_STATUSES = frozenset({408, 429})


def event_id(job: Job) -> str:
    """The `webhook-id` of the job's current end: the same for every attempt and resend of it,
    new when an operator's retry reopens the job and it ends again.

    The end's time names it: it is set once as the job ends and cleared when the job reopens.
    The manifest version could not: a late result rewrites the manifest of an ended job.
    """
    ended = job.ended_at if job.ended_at is not None else float(job.manifest_version)
    return f"job-{job.id}-ended-{round(ended * 1000)}"


def event_body(ctx: Context, job: Job) -> bytes:
    """The JSON body of a job's end event: its type, when it happened and the job as the API
    shows it (result URLs signed afresh for each attempt, so a late retry carries live ones)."""
    event = {
        "type": EVENT_TYPE,
        "timestamp": clock.iso(job.ended_at),
        "data": job_view(job, presigner(ctx)),
    }
    return json.dumps(event).encode()


def backoff_cap(settings: Settings) -> float:
    return min(BACKOFF_CAP_SECONDS, settings.visibility_timeout_seconds / 2)


def retry_delay(
    elapsed: float,
    left: float,
    retry_after: float | None,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the next attempt of a delivery, or None when its retry window is spent.

    Each wait is half to all of the time since the event (jitter), at least FIRST_RETRY_SECONDS
    and at most `cap`: attempts thin out exponentially. A receiver's Retry-After is honoured up
    to the cap; one asking for a wait past the window's end gives up at once. Otherwise the
    last attempt falls at the window's end.
    """
    if left < 1:
        return None
    span = min(cap, max(FIRST_RETRY_SECONDS, elapsed))
    wait = span * (0.5 + rand() / 2)
    if retry_after is not None:
        asked = min(cap, retry_after)
        if asked > left:
            return None
        wait = max(wait, asked)
    return min(wait, left)


def send_callback(
    ctx: Context, job_id: str, attempts: CallbackLog | None = None
) -> CallbackOutcome:
    """POST the ended job and record the attempt; a receiver that is down or busy raises
    `CallbackUnavailable` carrying the wait before the next attempt, until the retry window
    is spent (then GAVE_UP)."""
    job = ctx.store.get_job(job_id)
    if job is None or not job.callback_url or not job.terminal:
        return CallbackOutcome.SKIPPED
    # Neither refusal below is an attempt: nothing is sent and nothing is written, so a URL
    # rewritten in the store by an attacker leaves no trace in the job either.
    secrets = ctx.settings.callback_secrets_for(job.tenant)
    if not secrets:
        # Never unsigned: a receiver could not tell our callback from a forged one.
        log.warning("callback not sent: no secret to sign it", extra={"job_id": job_id})
        metrics.callback(CallbackOutcome.UNSIGNED)
        return CallbackOutcome.UNSIGNED
    try:
        checked = check_outbound_url(
            job.callback_url, allowed_hosts=None, allow_private=ctx.settings.allow_private_urls
        )
    except UnsafeURL as exc:
        log.warning("callback refused", extra={"job_id": job_id, "error": str(exc)})
        metrics.callback(CallbackOutcome.REFUSED)
        return CallbackOutcome.REFUSED
    delivery = Delivery(ctx, job, attempts if attempts is not None else log_for(ctx))
    body = event_body(ctx, job)
    headers = {"Content-Type": "application/json", **sign_callback(secrets, delivery.id, body)}
    request = pinned_request(
        ctx.http, "POST", checked, content=body, headers=headers, timeout=CALLBACK_TIMEOUT
    )
    try:
        response = ctx.http.send(request)
    except httpx.HTTPError as exc:
        return delivery.retry_or_give_up(None, type(exc).__name__, None)
    status = response.status_code
    if status >= 500 or status in RETRYABLE_STATUSES:
        return delivery.retry_or_give_up(status, None, parse_retry_after(response))
    if status >= 300:
        log.warning("callback refused by its receiver", extra={"job_id": job_id, "status": status})
        return delivery.done(CallbackOutcome.REJECTED, status=status)
    return delivery.done(CallbackOutcome.SENT, status=status)


class Delivery:
    """One attempt at delivering a job's end event: times it and records how it went."""

    def __init__(self, ctx: Context, job: Job, attempts: CallbackLog) -> None:
        self.ctx = ctx
        self.job = job
        self.attempts = attempts
        self.id = event_id(job)
        self.at = clock.now()
        self.started = time.monotonic()

    def done(
        self,
        outcome: CallbackOutcome,
        *,
        status: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> CallbackOutcome:
        metrics.callback(outcome)
        self.attempts.record(
            self.job.id,
            {
                "at": clock.iso(self.at),
                "webhookId": self.id,
                "outcome": outcome.value,
                "status": status,
                "error": error,
                "durationMs": round((time.monotonic() - self.started) * 1000, 1),
                "nextAttemptAt": clock.iso(next_attempt_at),
            },
        )
        return outcome

    def retry_or_give_up(
        self, status: int | None, error: str | None, retry_after: float | None
    ) -> CallbackOutcome:
        """A transient failure: schedule the next attempt, or give up once the window is spent."""
        settings = self.ctx.settings
        since = self.attempts.window_opened(self.job.id, self.id)
        if since is None:
            since = self.job.ended_at or self.job.updated_at
        now = clock.now()
        left = since + settings.callback_retry_window_seconds - now
        wait = retry_delay(now - since, left, retry_after, backoff_cap(settings))
        if wait is None:
            log.warning(
                "callback given up: its retry window is spent",
                extra={"job_id": self.job.id, "status": status, "error": error},
            )
            return self.done(CallbackOutcome.GAVE_UP, status=status, error=error)
        self.done(CallbackOutcome.RETRYING, status=status, error=error, next_attempt_at=now + wait)
        reason = f"answered {status}" if status is not None else f"failed: {error}"
        # The wait is decided here, not by the task's backoff: backoff=False keeps it exact.
        raise CallbackUnavailable(f"callback {reason}", retry_after=wait, backoff=False)


def parse_retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds or as an HTTP date; None when absent or unreadable."""
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000": UTC, with no zone said
    return max(0.0, when.timestamp() - clock.now())


def resend_callback(ctx: Context, job_id: str, attempts: CallbackLog | None = None) -> str:
    """Deliver the job's current end event again, with a retry window of its own from now;
    the same `webhook-id` as before (the same event), so a receiver that has it drops it.
    Returns that id."""
    job = ctx.store.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if not job.callback_url:
        raise Conflict(f"job {job_id} has no callbackURL")
    if not job.terminal:
        raise Conflict(f"job {job_id} has not ended: its callback is sent when it does")
    webhook_id = event_id(job)
    (attempts if attempts is not None else log_for(ctx)).open_window(
        job_id, webhook_id, clock.now()
    )
    ctx.dispatcher.notify_job(job_id)
    log.info("callback resent", extra={"job_id": job_id, "webhook_id": webhook_id})
    return webhook_id
