"""The Celery app, configured for at-least-once delivery of id-only nudges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from pipeline.config import Settings
from pipeline.dispatch import QUEUES, SUBMIT_QUEUE
from pipeline.logs import configure_logging
from workers.broker import transport_for


def _configure_logging(settings: Settings) -> Callable[..., None]:
    def configure(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_format)

    return configure


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("imagine", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        broker_transport=transport_for(settings.broker_url),
        # One direct exchange per queue: a message routed to one queue is never copied to another.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in QUEUES],
        task_default_queue=SUBMIT_QUEUE,
        # Each worker also consumes its own queue, so an operator can reach one worker directly.
        worker_direct=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {
                "task": "imagine.reconcile",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": "reconcile", "expires": settings.reconcile_interval_seconds},
            },
        },
    )
    # The worker and beat log through the pipeline's own handler (JSON lines with context),
    # configured once at start; Celery then leaves the root logger alone.
    signals.setup_logging.connect(_configure_logging(settings), weak=False)
    # Kept beside the configuration, not in it: `inspect conf` and Flower show app.conf to
    # anyone who reaches the broker, and Settings holds every credential of the pipeline.
    app.imagine_settings = settings
    return app
