"""The Celery app every process shares, and nudges to the workers sent by task name."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import ChannelError

from pipeline.broker import transport_for
from pipeline.config import Settings

SUBMIT_QUEUE = "submit"
FINALIZE_QUEUE = "finalize"
NOTIFY_QUEUE = "notify"
RECONCILE_QUEUE = "reconcile"
QUEUES = (SUBMIT_QUEUE, FINALIZE_QUEUE, NOTIFY_QUEUE, RECONCILE_QUEUE)


def create_celery(settings: Settings | None = None) -> Celery:
    """The one Celery app definition: at-least-once delivery of id-only nudges.

    Tasks are found by name (`workers.tasks`, loaded by the worker only), so a process that only
    sends messages, such as the receiver or the CLI, never imports the workers."""
    settings = settings or Settings.from_env()
    app = Celery("imagine", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        broker_transport=transport_for(settings.broker_url),
        # One direct exchange per queue: a message routed to one queue is never copied to another.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
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
                "options": {
                    "queue": RECONCILE_QUEUE,
                    "expires": settings.reconcile_interval_seconds,
                },
            },
        },
    )
    # Kept beside the configuration, not in it: `inspect conf` and Flower show app.conf to
    # anyone who reaches the broker, and Settings holds every credential of the pipeline.
    app.imagine_settings = settings
    return app


class CeleryDispatcher:
    """A `Dispatcher` over a Celery app: messages carry ids only."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        self._app.send_task(
            "imagine.submit_job", args=[job_id], queue=SUBMIT_QUEUE, countdown=countdown or None
        )

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        self._app.send_task(
            "imagine.finalize_slot",
            args=[job_id, slot],
            queue=FINALIZE_QUEUE,
            countdown=countdown or None,
        )

    def notify_job(self, job_id: str) -> None:
        self._app.send_task("imagine.notify_job", args=[job_id], queue=NOTIFY_QUEUE)

    def queue_lengths(self) -> dict[str, int]:
        """Messages waiting in each queue, as the broker counts them."""
        lengths: dict[str, int] = {}
        with self._app.connection_for_read() as connection:
            channel: Any = connection.default_channel
            for name in QUEUES:
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                except ChannelError:
                    # The Redis transport has no queue until a message is in it.
                    lengths[name] = 0
                else:
                    lengths[name] = int(declared.message_count)
        return lengths
