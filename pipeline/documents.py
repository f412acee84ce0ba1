"""What the outside world reads about a job: the API's job view, the manifest in S3, and the
presigned URLs that let a caller without S3 credentials download the results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import clock
from pipeline.clock import iso
from pipeline.errors import Conflict, NotFound
from pipeline.models import Job, JobState, Slot, SlotState

if TYPE_CHECKING:
    from pipeline.context import Context

# SigV4 presigned URLs live at most seven days; S3 refuses a longer one outright.
MAX_URL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class ResultURL:
    """A presigned GET URL of one object and when it stops working."""

    url: str
    expires_at: float


Presign = Callable[[str], ResultURL]


def result_url(ctx: Context, key: str) -> ResultURL:
    """A fresh presigned GET URL of `key`, living RESULT_URL_SECONDS (at most seven days)."""
    seconds = min(ctx.settings.result_url_seconds, MAX_URL_SECONDS)
    # Read before signing: the URL works at least until the time the view gives.
    expires_at = clock.now() + seconds
    return ResultURL(ctx.storage.presign_get(key, seconds), expires_at)


def presigner(ctx: Context) -> Presign | None:
    """What signs result URLs for job views; None while RESULT_URL_SECONDS is 0."""
    if ctx.settings.result_url_seconds <= 0:
        return None
    return lambda key: result_url(ctx, key)


def image_url(ctx: Context, job: Job, number: int) -> ResultURL:
    """A fresh URL of one stored image of `job`: NotFound for a slot the job does not have or
    while result URLs are off, Conflict for an image not stored (yet, or ever)."""
    if ctx.settings.result_url_seconds <= 0:
        raise NotFound("result URLs are turned off on this deployment (RESULT_URL_SECONDS=0)")
    slot = job.slot(number)
    if slot is None:
        raise NotFound(f"job {job.id} has no image {number}")
    if slot.state != SlotState.STORED or not slot.final_key:
        raise Conflict(f"image {number} of job {job.id} is {slot.state}, not stored")
    return result_url(ctx, slot.final_key)


def _link(presign: Presign | None, key: str | None) -> tuple[str | None, str | None]:
    if presign is None or key is None:
        return None, None
    found = presign(key)
    return found.url, iso(found.expires_at)


def slot_view(slot: Slot, presign: Presign | None = None) -> dict[str, Any]:
    """A slot as the API shows it: its record, and a URL of its image once it is stored."""
    stored = slot.state == SlotState.STORED
    url, expires = _link(presign, slot.final_key if stored else None)
    return {**slot_record(slot), **slot_history(slot), "url": url, "urlExpiresAt": expires}


def slot_history(slot: Slot) -> dict[str, Any]:
    """How a slot got where it is: the current attempt's times, and each retired attempt (its
    taskUUID, how it ended and why) as the step that retired it recorded it."""
    return {
        "previousTaskUUIDs": list(slot.previous_task_uuids),
        "submittedAt": iso(slot.submitted_at),
        "receivedAt": iso(slot.received_at),
        "storedAt": iso(slot.stored_at),
        "updatedAt": iso(slot.updated_at),
        "history": [
            {
                "attempt": entry.get("attempt"),
                "taskUUID": entry.get("taskUUID"),
                "state": entry.get("state"),
                "model": entry.get("model"),
                "code": entry.get("code"),
                "message": entry.get("message"),
                **{name: iso(entry.get(name)) for name in HISTORY_TIMES},
            }
            for entry in slot.history
        ],
    }


HISTORY_TIMES = ("submittedAt", "receivedAt", "endedAt")


def slot_record(slot: Slot) -> dict[str, Any]:
    """A slot as both the API and the manifest show it (the manifest carries no URL: it is
    written once, and URLs expire)."""
    return {
        "slot": slot.slot,
        "state": slot.state,
        "model": slot.model,
        "attempt": slot.attempt,
        "taskUUID": slot.task_uuid,
        "finalKey": slot.final_key,
        "imageUUID": slot.image_uuid,
        "seed": slot.seed,
        "cost": slot.cost,
        "width": slot.width,
        "height": slot.height,
        "format": slot.format,
        "requested": requested(slot),
        "sizeMismatch": slot.size_mismatch,
        "formatMismatch": slot.format_mismatch,
        "bytes": slot.size,
        "etag": slot.etag,
        "error": (
            {"code": slot.error_code, "message": slot.error_message}
            if slot.error_code and slot.state != SlotState.STORED
            else None
        ),
    }


def requested(slot: Slot) -> dict[str, Any] | None:
    """What the job asked of a stored image (width and height are null when an edit allowed
    several sizes); the actual ones are the slot's `width`, `height` and `format`."""
    if slot.requested_format is None:
        return None
    return {
        "width": slot.requested_width,
        "height": slot.requested_height,
        "format": slot.requested_format,
    }


def job_view(job: Job, presign: Presign | None = None) -> dict[str, Any]:
    """A job as the API shows it; with `presign`, URLs of its stored images and its manifest
    (null without, or before the manifest exists)."""
    manifest_url, manifest_expires = _link(presign, job.manifest_key)
    return {
        "id": job.id,
        "tenant": job.tenant,
        "state": job.state,
        "model": job.model,
        "fallbackModel": job.fallback_model,
        "numberResults": job.slot_count,
        "outputFormat": job.output_format,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "deadlineAt": iso(job.deadline_at),
        "endedAt": iso(job.ended_at),
        "reason": job.reason,
        "clientTaskUUID": job.client_task_uuid,
        "idempotencyKey": job.idempotency_key,
        "callbackURL": job.callback_url,
        "metadata": job.metadata,
        "manifestKey": job.manifest_key,
        "manifestURL": manifest_url,
        "manifestURLExpiresAt": manifest_expires,
        "cost": job.cost,
        "slots": [slot_view(slot, presign) for slot in job.slots],
    }


def manifest(job: Job, state: JobState, version: int, ended: float) -> dict[str, Any]:
    """The manifest written last for every ended job; consumers trigger on its key."""
    return {
        "manifestVersion": version,
        "jobId": job.id,
        "tenant": job.tenant,
        "state": state,
        "model": job.model,
        "fallbackModel": job.fallback_model,
        "createdAt": iso(job.created_at),
        "endedAt": iso(ended),
        "reason": job.reason,
        "clientTaskUUID": job.client_task_uuid,
        "metadata": job.metadata,
        "request": job.params,
        "cost": job.cost or 0.0,
        "slots": [slot_record(slot) for slot in job.slots],
    }
