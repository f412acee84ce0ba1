"""The one place that builds the pipeline's services from settings, for every process."""

from __future__ import annotations

from dataclasses import replace

import httpx

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.dispatch import CeleryDispatcher, create_celery
from pipeline.interfaces import Dispatcher
from pipeline.runware import RunwareClient
from pipeline.services import JobService
from pipeline.storage import (
    REQUEST_PATH_CONNECT_TIMEOUT,
    S3ObjectStorage,
    s3_storage_by_timeout,
)
from pipeline.store import RedisCircuit, RedisInFlightBudget, RedisJobStore, redis_client

OUTBOUND_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def build_service(
    settings: Settings,
    *,
    dispatcher: Dispatcher | None = None,
    http: httpx.Client | None = None,
    runware: RunwareClient | None = None,
    request_path: bool = False,
) -> JobService:
    """The pipeline over Redis, S3, Runware and Celery as the settings name them; on
    `request_path` (the receiver and jobs API: an HTTP caller waits) Redis and S3 get one quick
    try each, so a dependency that is down is a prompt 503, not a wait."""
    client = redis_client(settings, request_path=request_path)
    storage = (
        S3ObjectStorage.from_settings(
            settings, attempts=0, connect_timeout=REQUEST_PATH_CONNECT_TIMEOUT
        )
        if request_path
        else S3ObjectStorage.from_settings(settings)
    )
    if runware is None and settings.runware_api_key:
        runware = RunwareClient.from_settings(settings)
    context = Context(
        settings=settings,
        store=RedisJobStore.from_settings(settings, client),
        storage=storage,
        dispatcher=dispatcher or CeleryDispatcher(create_celery(settings)),
        circuit=RedisCircuit(client),
        budget=RedisInFlightBudget(client, settings.runware_api_key.reveal()),
        http=http or httpx.Client(timeout=OUTBOUND_TIMEOUT, follow_redirects=False),
        provider=runware,
    )
    return JobService(context)


def with_short_s3_timeouts(service: JobService) -> JobService:
    """The same service whose S3 calls make one attempt bounded by
    INLINE_PROMOTE_TIMEOUT_SECONDS: for work done while an HTTP caller waits (the webhook's
    promotion, a readiness probe); a worker takes over when it is not enough. The webhook's
    promotion also bounds each call by what is left of INLINE_PROMOTE_BUDGET_SECONDS
    (`inline_storage`)."""
    settings = service.settings
    storage_for = s3_storage_by_timeout(settings)
    storage = storage_for(settings.inline_promote_timeout_seconds)
    return JobService(replace(service.context, storage=storage, inline_storage=storage_for))
