"""The project's base task: late acks, one service per process, and the one place that decides
whether a failure is retried (the error says so) and when (backoff with jitter, capped)."""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Task

from pipeline.config import Settings
from pipeline.dispatch import CeleryDispatcher
from pipeline.errors import PipelineError, Retryable
from pipeline.services import JobService
from pipeline.wiring import build_service

log = logging.getLogger(__name__)


def is_retryable(exc: BaseException) -> bool:
    """A failure the same call may get past later: the pipeline's own transient errors, and
    Redis being unreachable for a moment."""
    if isinstance(exc, PipelineError):
        return exc.retryable
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


class PipelineTask(Task):  # type: ignore[misc]  # celery ships no type information
    """Holds one `JobService` per worker process; task bodies are one call into it.

    `retries_setting` names the setting that caps a task's retries (else `max_retries`)."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries: int | None = 8
    retries_setting: str | None = None
    _service: JobService | None = None

    @property
    def settings(self) -> Settings:
        settings: Settings = self.app.imagine_settings
        return settings

    @property
    def service(self) -> JobService:
        if PipelineTask._service is None:
            PipelineTask._service = build_service(
                self.settings, dispatcher=CeleryDispatcher(self.app)
            )
        return PipelineTask._service

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            raise self.retry_later(exc) from exc

    def retry_later(self, exc: BaseException) -> Any:
        """Schedule this task again; past its retry limit Celery records the failure."""
        limit = (
            getattr(self.settings, self.retries_setting)
            if self.retries_setting
            else self.max_retries
        )
        log.warning(
            "transient failure, retrying",
            extra={"task": self.name, "error": repr(exc), "retries": self.request.retries},
        )
        return self.retry(exc=exc, countdown=self.countdown(exc), max_retries=limit)

    def countdown(self, exc: BaseException) -> float:
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, Retryable) and not exc.backoff and retry_after is not None:
            # The pipeline chose the wait: a poll at a fixed pace, or a callback's schedule
            # (kept below the visibility timeout there).
            return float(retry_after)
        return self.backoff(retry_after)

    def backoff(self, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter, capped, honouring Retry-After up to the cap."""
        cap = self.settings.retry_backoff_cap_seconds
        delay = random.uniform(0, min(cap, 2 ** (self.request.retries + 1)))
        if retry_after is not None:
            delay = max(delay, min(cap, retry_after))
        return delay
