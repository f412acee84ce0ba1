"""The worker's Celery app: the shared definition, logging through the pipeline's handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from pipeline import selftest, tracing
from pipeline.config import Settings
from pipeline.dispatch import create_celery
from pipeline.logs import configure_logging
from workers import metrics as worker_metrics
from workers.base import connect_signals


def _configure_logging(settings: Settings) -> Callable[..., None]:
    def configure(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_format)

    return configure


def _probe_webhook_path(settings: Settings) -> Callable[..., None]:
    def probe(**_: Any) -> None:
        selftest.probe_in_background(settings)

    return probe


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = create_celery(settings)
    # The worker and beat log through the pipeline's own handler (JSON lines with context),
    # configured once at start; Celery then leaves the root logger alone.
    signals.setup_logging.connect(_configure_logging(settings), weak=False)
    connect_signals(app, settings)  # each task's log scope, Flower's view (workers.base)
    worker_metrics.install(settings)  # the worker's /metrics on WORKER_METRICS_PORT, if set
    tracing.trace_celery_processes()  # off unless the OTEL_* settings ask
    # Can Runware's webhooks reach the receiver? Logged and counted, never holding the start.
    signals.worker_ready.connect(_probe_webhook_path(settings), weak=False)
    return app
