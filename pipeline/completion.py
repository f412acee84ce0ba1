"""Ending jobs: a slot that fails, a job whose slots have all ended, a cancellation; the manifest
is written before the terminal state, and the end is announced once."""

from __future__ import annotations

import json
import logging

from pipeline import admission, clock, events, metrics
from pipeline.context import Context
from pipeline.documents import manifest
from pipeline.errors import Conflict, NotFound, StorageError
from pipeline.failures import FAILED_ENDS
from pipeline.models import (
    JOB_OPEN,
    JOB_TERMINAL,
    SLOT_OPEN,
    Job,
    JobState,
    SlotState,
)

log = logging.getLogger(__name__)

# Longer than a manifest write takes; held past it only by a process that died while writing.
FINISH_LOCK_SECONDS = 30.0


def fail_slot(
    ctx: Context, job_id: str, slot: int, task_uuid: str | None, code: str, message: str
) -> bool:
    failed = ctx.store.transition_slot(
        job_id,
        slot,
        SLOT_OPEN,
        SlotState.FAILED,
        task_uuid=task_uuid,
        error_code=code,
        error_message=message[:1000],
    )
    if failed:
        metrics.image_failed(code, for_good=True)
    return failed


def outcome_of(job: Job) -> JobState:
    """The terminal state a job whose slots have all ended deserves."""
    stored = sum(1 for slot in job.slots if slot.state == SlotState.STORED)
    if job.state == JobState.CANCELLED:
        return JobState.CANCELLED
    if job.slots and stored == len(job.slots):
        return JobState.SUCCEEDED
    if stored:
        return JobState.PARTIALLY_SUCCEEDED
    if any(slot.error_code == "deadline" for slot in job.slots):
        return JobState.TIMED_OUT
    return JobState.FAILED


def finish_job(ctx: Context, job_id: str) -> bool:
    """End a job once every slot has ended: manifest first, then the terminal state."""
    job = ctx.store.get_job(job_id)
    if job is None or any(not slot.terminal for slot in job.slots):
        return False
    state = outcome_of(job)
    if job.terminal and job.manifest_key and job.state == state:
        return False
    # A job's images end together, and each one's step finishes the job: one of them writes
    # the manifest (2.3 writes per 4-image job without this). The others have nothing left to
    # do; should the writer fail, its retry (or the reconciler, past its grace) ends the job.
    with ctx.store.exclusive(f"finish:{job_id}", FINISH_LOCK_SECONDS) as mine:
        return mine and end_job(ctx, job, state)


def end_job(ctx: Context, job: Job, state: JobState) -> bool:
    """Write the manifest of a job whose slots have all ended, then its terminal state."""
    job_id = job.id
    if not job.terminal and ctx.store.job_state(job_id) in JOB_TERMINAL:
        return False  # another finisher ended it between our read and our lock
    version = max(job.manifest_version, 1)
    # The last slot's change ends the job: concurrent finishers write the same manifest.
    ended = (
        job.ended_at
        or max((slot.updated_at or 0.0 for slot in job.slots), default=0.0)
        or clock.now()
    )
    remove_staged(ctx, job)
    manifest_key = put_manifest(ctx, job, state, version, ended)
    # Announced by the transition itself, once the manifest it names is in S3.
    event = events.ended_event(job, state, manifest_key, version, clock.now())
    applied = ctx.store.transition_job(
        job_id,
        JOB_OPEN,
        state,
        manifest_key=manifest_key,
        manifest_version=version,
        ended_at=repr(ended),
        event=event,
    )
    if not applied:
        # A job ended from outside whose manifest only now exists (its canceller died before
        # writing it) is announced with it.
        ctx.store.set_job_fields(
            job_id,
            manifest_key=manifest_key,
            manifest_version=version,
            event=event if job.terminal else None,
        )
        return False
    metrics.job_ended(job.tenant, state, job.created_at, ended)
    announce_end(ctx, job, state)
    log.info(
        "job ended",
        extra={
            "job_id": job_id,
            "state": state,
            "images": len(job.slots),
            "stored": sum(s.state == SlotState.STORED for s in job.slots),
        },
    )
    return True


def remove_staged(ctx: Context, job: Job) -> None:
    """Drop the staged uploads of a job's stored images, all in one request as the job ends
    (one request per image before: a quarter of the local S3 server's requests)."""
    keys = [
        ctx.layout.staging(job.id, slot.task_uuid)
        for slot in job.slots
        if slot.state == SlotState.STORED and slot.task_uuid
    ]
    if not keys:
        return
    try:
        ctx.storage.delete_many(keys)
    except StorageError:
        log.warning("staging objects left for the lifecycle rule", extra={"job_id": job.id})


def put_manifest(ctx: Context, job: Job, state: JobState, version: int, ended: float) -> str:
    key = ctx.layout.manifest(job.id)
    document = manifest(job, state, version, ended)
    ctx.storage.put(
        key,
        json.dumps(document, indent=2).encode(),
        content_type="application/json",
        metadata={
            "imagine-job-id": job.id,
            "imagine-state": state,
            "imagine-manifest-version": str(version),
        },
    )
    return key


def announce_end(ctx: Context, job: Job, state: JobState | None = None) -> None:
    """An ended job (its `job.ended` event published with its manifest's record): retention
    TTLs, and the task that sends its callback and shows a failed end to operators
    (`failures.JobFailed`)."""
    ctx.store.retire_job(job.id, job)
    if job.callback_url or (state or job.state) in FAILED_ENDS:
        ctx.dispatcher.notify_job(job.id)


def close_open_slots(ctx: Context, job: Job, code: str, message: str) -> None:
    """Fail every slot still open (cancellation, deadline) and give its lease back."""
    for slot in job.slots:
        if slot.state in SLOT_OPEN:
            closed = ctx.store.transition_slot(
                job.id,
                slot.slot,
                SLOT_OPEN,
                SlotState.FAILED,
                error_code=code,
                error_message=message,
            )
            if closed:
                metrics.image_failed(code, for_good=True)
                if slot.state == SlotState.RECEIVED:  # charged, never stored
                    metrics.image_charged(job.tenant, slot.cost)
            if slot.task_uuid:
                admission.release(ctx, [slot.task_uuid])


def cancel_job(ctx: Context, job_id: str, tenant: str | None = None) -> Job:
    job = ctx.store.get_job(job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"no job {job_id}")
    if job.terminal:
        raise Conflict(f"job {job_id} has already ended as {job.state}")
    now = clock.now()
    if ctx.store.transition_job(
        job_id,
        JOB_OPEN,
        JobState.CANCELLED,
        reason="cancelled by request",
        ended_at=repr(now),
    ):
        metrics.job_ended(job.tenant, JobState.CANCELLED, job.created_at, now)
    close_open_slots(ctx, job, "cancelled", "the job was cancelled")
    write_final_manifest(ctx, job_id)
    cancelled = ctx.store.get_job(job_id)
    if cancelled is None:
        raise NotFound(f"job {job_id} has expired")
    return cancelled


def write_final_manifest(ctx: Context, job_id: str) -> None:
    """The manifest of a job that was ended from outside (cancelled), then its announcement."""
    job = ctx.store.get_job(job_id)
    if job is None:
        return
    version = max(job.manifest_version, 1)
    remove_staged(ctx, job)
    key = put_manifest(ctx, job, job.state, version, job.ended_at or clock.now())
    ctx.store.set_job_fields(
        job_id,
        manifest_key=key,
        manifest_version=version,
        event=events.ended_event(job, job.state, key, version, clock.now()),
    )
    announce_end(ctx, job)


def rewrite_manifest(ctx: Context, job_id: str) -> None:
    """The manifest of an ended job written again with a higher version, when something the
    provider charged for arrived after the end (a late result recorded as discarded)."""
    job = ctx.store.get_job(job_id)
    if job is None or not job.terminal or not job.manifest_key:
        return
    version = job.manifest_version + 1
    key = put_manifest(ctx, job, job.state, version, job.ended_at or clock.now())
    ctx.store.set_job_fields(
        job_id,
        manifest_key=key,
        manifest_version=version,
        event=events.ended_event(job, job.state, key, version, clock.now()),
    )
    log.info("manifest rewritten for a late result", extra={"job_id": job_id, "version": version})
