"""Enqueue: a validated request becomes a queued job (once per idempotency key), then a nudge."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from typing import Any

from marshmallow import ValidationError

from pipeline import clock, metrics, quotas, tracing
from pipeline.completion import finish_job
from pipeline.context import Context
from pipeline.errors import Conflict, LimitExceeded, NotFound, RequestInvalid
from pipeline.models import Job, JobState
from pipeline.schemas import load_job_request
from pipeline.urls import UnsafeURL, check_outbound_url

log = logging.getLogger(__name__)

GENERATION_FIELDS = (
    "model",
    "positivePrompt",
    "width",
    "height",
    "resolution",
    "numberResults",
    "outputFormat",
    "outputQuality",
    "inputs",
    "safety",
)


# The canonical text of a UUID, as str(uuid.UUID(...)) writes it: lower-case hex, hyphenated.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_job_id(value: str) -> bool:
    """Job ids are the canonical text of a UUID; anything else never reaches a key name."""
    return isinstance(value, str) and _CANONICAL_UUID.fullmatch(value) is not None


def canonical_hash(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@tracing.job_span("imagine.enqueue", tenant="tenant")
def create_job(
    ctx: Context, body: Any, tenant: str, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Validate a request and record a queued job; returns (job, created)."""
    request = validate(ctx, body, idempotency_key, tenant)
    key = idempotency_key or request.get("idempotencyKey")
    deadline = min(
        request.get("deadlineSeconds") or ctx.settings.default_deadline_seconds,
        ctx.settings.max_deadline_seconds,
    )
    now = clock.now()
    params = {name: request[name] for name in GENERATION_FIELDS if name in request}
    job = Job(
        id=str(uuid.uuid4()),
        tenant=tenant,
        state=JobState.QUEUED,
        model=params["model"],
        fallback_model=request.get("fallbackModel"),
        params=params,
        slot_count=params["numberResults"],
        output_format=params["outputFormat"],
        created_at=now,
        updated_at=now,
        deadline_at=now + deadline,
        client_task_uuid=request.get("taskUUID"),
        idempotency_key=key,
        callback_url=request.get("callbackURL"),
        metadata=request.get("metadata") or {},
    )
    tracing.annotate(job_id=job.id)
    body_hash = request_hash(request)
    # After validation, so a refused request counts nothing; a replay of a job made before
    # is not counted again.
    reservation = quotas.reserve_daily(ctx, request, tenant, key)
    try:
        job_id, stored_hash = ctx.store.create_job(job, body_hash)
    except Exception:
        quotas.give_back(ctx, reservation)
        raise
    if stored_hash is not None:
        # Another submit with this key made its job between the count and the write.
        quotas.give_back(ctx, reservation)
        if stored_hash != body_hash:
            raise Conflict(
                "this idempotency key was used with another request body", {"idempotencyKey": [key]}
            )
        return get_job(ctx, job_id), False
    metrics.job_created(tenant)
    ctx.dispatcher.submit_job(job.id)
    log.info("job created", extra={"job_id": job.id, "tenant": tenant, "images": job.slot_count})
    return get_job(ctx, job.id), True


def request_hash(request: dict[str, Any]) -> str:
    """What an idempotency key is held to: the validated request, wherever its key was given."""
    return canonical_hash({k: v for k, v in request.items() if k != "idempotencyKey"})


def validate(ctx: Context, body: Any, idempotency_key: str | None, tenant: str) -> dict[str, Any]:
    """The request as the catalog and the pipeline's own rules accept it, or RequestInvalid
    naming each field."""
    try:
        request = load_job_request(body, ctx.settings.runware_model, ctx.settings.allowed_models)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise RequestInvalid("the job request is invalid", messages) from None
    body_key = request.get("idempotencyKey")
    if idempotency_key and body_key and idempotency_key != body_key:
        raise RequestInvalid(
            "the job request is invalid",
            {"idempotencyKey": ["differs from the Idempotency-Key header"]},
        )
    if request.get("callbackURL"):
        if not ctx.settings.callback_secrets_for(tenant):
            raise RequestInvalid(
                "the job request is invalid",
                {
                    "callbackURL": [
                        "callbacks are off: no CALLBACK_SECRET, nor a CALLBACK_SECRETS entry for "
                        "this tenant, to sign them"
                    ]
                },
            )
        try:
            check_outbound_url(
                request["callbackURL"],
                allowed_hosts=None,
                allow_private=ctx.settings.allow_private_urls,
            )
        except UnsafeURL as exc:
            raise RequestInvalid(
                "the job request is invalid", {"callbackURL": [str(exc)]}
            ) from None
    return request


def create_job_from_message(
    ctx: Context, body: Any, tenant: str, idempotency_key: str | None, message_id: str
) -> Job:
    """Enqueue by name from a trusted service: a refused request becomes a failed job that
    carries the errors, and a redelivered message never makes a second job."""
    in_body = isinstance(body, dict) and body.get("idempotencyKey")
    # Without a caller's key, the message id, stable across redeliveries, is the key.
    key = idempotency_key or (None if in_body else f"celery-message:{message_id}")
    try:
        job, _created = create_job(ctx, body, tenant, key)
    except RequestInvalid as exc:
        return create_refused_job(ctx, body, tenant, exc.errors, key)
    except LimitExceeded as exc:
        # A daily cap: the caller has no answer to read a 429 from, only the job. It is held
        # to the hash a redelivery of the message computes, which then finds it as a replay.
        held_to = request_hash(validate(ctx, body, key, tenant))
        reason = f"{exc.code}: {exc.message}"
        return create_refused_job(ctx, body, tenant, {}, key, reason=reason, body_hash=held_to)
    return job


def create_refused_job(
    ctx: Context,
    body: Any,
    tenant: str,
    errors: dict[str, Any],
    idempotency_key: str | None = None,
    *,
    reason: str | None = None,
    body_hash: str | None = None,
) -> Job:
    """Record a request a worker refused as a failed job that carries the errors (or, given,
    the `reason` it was refused), its idempotency key held to `body_hash` (default: the
    body's)."""
    now = clock.now()
    job = Job(
        id=str(uuid.uuid4()),
        tenant=tenant,
        state=JobState.QUEUED,
        model=ctx.settings.runware_model,
        params={},
        slot_count=0,
        output_format="JPG",
        created_at=now,
        updated_at=now,
        deadline_at=now,
        idempotency_key=idempotency_key,
        reason=reason or "validation_failed: " + json.dumps(errors, sort_keys=True)[:2000],
    )
    if body_hash is None:
        body_hash = canonical_hash(body) if isinstance(body, dict) else canonical_hash(repr(body))
    job_id, replayed = ctx.store.create_job(job, body_hash)
    if replayed is None:
        metrics.job_created(tenant)
    finish_job(ctx, job_id)
    return get_job(ctx, job_id)


def get_job(ctx: Context, job_id: str, tenant: str | None = None) -> Job:
    """A job by id; another tenant's job is as missing as one that never existed."""
    if not is_job_id(job_id):
        raise NotFound(f"no job {job_id[:64]!r}: job ids are UUIDs")
    job = ctx.store.get_job(job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"no job {job_id}")
    return job


def find_job(ctx: Context, ident: str) -> Job:
    """A job by its id or by the taskUUID of any of its images' attempts."""
    location = ctx.store.find_task(ident)
    return get_job(ctx, location[0] if location else ident)
