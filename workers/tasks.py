"""Thin Celery tasks: take ids, call one pipeline use case; the base task retries."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task

from pipeline.failures import JobFailed
from workers.base import PipelineTask


@shared_task(bind=True, base=PipelineTask, name="imagine.create_job")
def create_job(
    self: PipelineTask, request: Any, tenant: str, idempotency_key: str | None = None
) -> str:
    """Enqueue by name from trusted services; a refused request becomes a failed job."""
    return self.service.create_job_from_message(
        request, tenant, idempotency_key, self.request.id
    ).id


@shared_task(
    bind=True, base=PipelineTask, name="imagine.submit_job", retries_setting="submit_max_retries"
)
def submit_job(self: PipelineTask, job_id: str) -> str:
    return self.service.submit_job(job_id)


# Retried until the job's deadline, which ends the wait for a missing upload.
@shared_task(bind=True, base=PipelineTask, name="imagine.finalize_slot", max_retries=None)
def finalize_slot(self: PipelineTask, job_id: str, slot: int) -> str:
    return self.service.finalize_slot(job_id, slot)


# Retried until the callback's retry window is spent (pipeline.callbacks decides each wait);
# then a job that ended without its images fails the task: Flower's failures (JobFailed).
@shared_task(
    bind=True,
    base=PipelineTask,
    name="imagine.notify_job",
    max_retries=None,
    throws=(JobFailed,),
)
def notify_job(self: PipelineTask, job_id: str) -> str:
    return self.service.announce_end(job_id)


# Every few seconds: Flower shows a pass only when it fails (QuietRequest).
@shared_task(
    bind=True,
    base=PipelineTask,
    name="imagine.reconcile",
    send_events=False,
    Request="workers.base:QuietRequest",
)
def reconcile(self: PipelineTask) -> dict[str, Any]:
    return asdict(self.service.reconcile())
