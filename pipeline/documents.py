"""What the outside world reads about a job: the API's job view and the manifest in S3."""

from __future__ import annotations

from typing import Any

from pipeline.clock import iso
from pipeline.models import Job, JobState, Slot, SlotState


def slot_view(slot: Slot) -> dict[str, Any]:
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


def job_view(job: Job) -> dict[str, Any]:
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
        "cost": job.cost,
        "slots": [slot_view(slot) for slot in job.slots],
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
        "slots": [slot_view(slot) for slot in job.slots],
    }
