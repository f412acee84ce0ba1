"""Callbacks: an ended job POSTed to its callback URL, always signed (Standard Webhooks), to
the address checked against SSRF at send time."""

from __future__ import annotations

import json
import logging

import httpx

from pipeline.context import Context
from pipeline.documents import job_view
from pipeline.errors import CallbackUnavailable
from pipeline.models import CallbackOutcome
from pipeline.signing import sign_callback
from pipeline.urls import UnsafeURL, check_outbound_url, pinned_request

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT = 10.0


def send_callback(ctx: Context, job_id: str) -> CallbackOutcome:
    """POST the ended job; a target that is down or busy raises `CallbackUnavailable`."""
    job = ctx.store.get_job(job_id)
    if job is None or not job.callback_url or not job.terminal:
        return CallbackOutcome.SKIPPED
    secrets = ctx.settings.callback_secrets_for(job.tenant)
    if not secrets:
        # Never unsigned: a receiver could not tell our callback from a forged one.
        log.warning("callback not sent: no secret to sign it", extra={"job_id": job_id})
        return CallbackOutcome.UNSIGNED
    try:
        checked = check_outbound_url(
            job.callback_url, allowed_hosts=None, allow_private=ctx.settings.allow_private_urls
        )
    except UnsafeURL as exc:
        log.warning("callback refused", extra={"job_id": job_id, "error": str(exc)})
        return CallbackOutcome.REFUSED
    body = json.dumps({"type": "job.ended", "data": job_view(job)}).encode()
    headers = {
        "Content-Type": "application/json",
        **sign_callback(secrets, f"{job_id}:{job.state}", body),
    }
    request = pinned_request(
        ctx.http, "POST", checked, content=body, headers=headers, timeout=CALLBACK_TIMEOUT
    )
    try:
        response = ctx.http.send(request)
    except httpx.HTTPError as exc:
        raise CallbackUnavailable(f"callback failed: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code in {408, 429}:
        raise CallbackUnavailable(
            f"callback answered {response.status_code}", retry_after=_retry_after(response)
        )
    if response.status_code >= 300:
        log.warning(
            "callback refused by its receiver",
            extra={"job_id": job_id, "status": response.status_code},
        )
        return CallbackOutcome.REJECTED
    return CallbackOutcome.SENT


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
