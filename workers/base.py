"""The project's base task: late acks, transient-only retries with capped jittered backoff."""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Task

from pipeline.config import Settings
from pipeline.dispatch import CeleryDispatcher
from pipeline.errors import ProviderError, StorageError
from pipeline.logs import configure_logging
from pipeline.services import JobService
from pipeline.storage import S3ObjectStorage
from pipeline.store import RedisJobStore

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ProviderError):
        return exc.kind == ProviderError.TRANSIENT
    if isinstance(exc, StorageError):
        return exc.transient
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


class PipelineTask(Task):  # type: ignore[misc]
    """Holds one `JobService` per worker process; tasks stay a few lines."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = 8
    _service: JobService | None = None

    @property
    def settings(self) -> Settings:
        settings: Settings = self.app.imagine_settings
        return settings

    @property
    def service(self) -> JobService:
        if PipelineTask._service is None:
            settings = self.settings
            configure_logging(settings.log_level, settings.log_format)
            PipelineTask._service = JobService(
                settings=settings,
                store=RedisJobStore.from_settings(settings),
                storage=S3ObjectStorage.from_settings(settings),
                dispatcher=CeleryDispatcher(self.app),
            )
        return PipelineTask._service

    def backoff(self, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter, capped, honouring Retry-After up to the cap."""
        cap = self.settings.retry_backoff_cap_seconds
        delay = random.uniform(0, min(cap, 2 ** (self.request.retries + 1)))
        if retry_after is not None:
            delay = max(delay, min(cap, retry_after))
        return delay

    def retry_transient(self, exc: BaseException, max_retries: int | None = None) -> Any:
        retry_after = exc.retry_after if isinstance(exc, ProviderError) else None
        log.warning("transient failure, retrying", extra={
            "task": self.name, "error": repr(exc), "retries": self.request.retries})
        return self.retry(exc=exc, countdown=self.backoff(retry_after),
                          max_retries=self.max_retries if max_retries is None else max_retries)
