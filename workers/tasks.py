"""Thin Celery tasks: take ids, call one pipeline use case."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from pipeline.errors import RequestInvalid
from workers.base import PipelineTask, is_transient


@shared_task(bind=True, base=PipelineTask, name="imagine.create_job")
def create_job(self: PipelineTask, request: Any, tenant: str,
               idempotency_key: str | None = None) -> str:
    """Enqueue by name from trusted services; a refused request becomes a failed job."""
    # A redelivered message (acks_late) must not make a second job: without a caller's key,
    # the message id, stable across redeliveries, is the idempotency key.
    in_body = isinstance(request, dict) and request.get("idempotencyKey")
    key = idempotency_key or (None if in_body else f"celery-message:{self.request.id}")
    try:
        job, _created = self.service.create_job(request, tenant, key)
    except RequestInvalid as exc:
        return self.service.create_refused_job(request, tenant, exc.errors, key).id
    except Exception as exc:
        if is_transient(exc):
            raise self.retry_transient(exc) from exc
        raise
    return job.id


@shared_task(bind=True, base=PipelineTask, name="imagine.submit_job")
def submit_job(self: PipelineTask, job_id: str) -> str:
    try:
        return self.service.submit_job(job_id)
    except Exception as exc:
        if is_transient(exc):
            raise self.retry_transient(exc, self.settings.submit_max_retries) from exc
        raise


@shared_task(bind=True, base=PipelineTask, name="imagine.finalize_slot", max_retries=None)
def finalize_slot(self: PipelineTask, job_id: str, slot: int) -> str:
    service = self.service
    current = service.store.get_slot(job_id, slot)
    waited = time.time() - (current.received_at or time.time()) if current else 0.0
    try:
        outcome = service.promote_slot(job_id, slot,
                                       allow_fetch=waited >= self.settings.upload_wait_seconds)
    except Exception as exc:
        if is_transient(exc):
            raise self.retry_transient(exc, max_retries=1000) from exc
        raise
    if outcome == "missing":
        job = service.store.get_job(job_id)
        if job is not None and time.time() < job.deadline_at:
            raise self.retry(countdown=self.settings.finalize_retry_seconds, max_retries=None)
    return outcome


@shared_task(bind=True, base=PipelineTask, name="imagine.notify_job")
def notify_job(self: PipelineTask, job_id: str) -> str:
    try:
        return self.service.send_callback(job_id)
    except Exception as exc:
        if is_transient(exc):
            raise self.retry_transient(exc) from exc
        raise


@shared_task(bind=True, base=PipelineTask, name="imagine.reconcile")
def reconcile(self: PipelineTask) -> dict[str, int]:
    """Singleton by lock: a second beat or a slow pass never runs two at once."""
    store = self.service.store
    lock = store.redis.lock(f"{store.ns}:reconcile:lock",
                            timeout=max(30, self.settings.reconcile_interval_seconds * 6),
                            blocking=False)
    if not lock.acquire():
        return {"skipped": 1}
    try:
        return self.service.reconcile()
    finally:
        try:
            lock.release()
        except Exception:  # noqa: S110 - an expired lock needs no release
            pass
