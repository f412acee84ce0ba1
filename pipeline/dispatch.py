"""The Celery app every process shares, and nudges to the workers sent by task name."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import ChannelError

from pipeline.broker import transport_for
from pipeline.config import Settings
from pipeline.logs import log_context
from pipeline.sentinel import broker_transport_options

SUBMIT_QUEUE = "submit"
FINALIZE_QUEUE = "finalize"
NOTIFY_QUEUE = "notify"
RECONCILE_QUEUE = "reconcile"
QUEUES = (SUBMIT_QUEUE, FINALIZE_QUEUE, NOTIFY_QUEUE, RECONCILE_QUEUE)

# Each task's parameters by name, for what Celery's events (and so Flower) show of a call.
TASK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "imagine.create_job": ("request", "tenant", "idempotency_key"),
    "imagine.submit_job": ("job_id",),
    "imagine.finalize_slot": ("job_id", "slot"),
    "imagine.notify_job": ("job_id",),
    "imagine.reconcile": (),
}
# Arguments no event shows: a job request holds the prompt, callback URL and metadata.
WITHHELD = frozenset({"request"})
# Message headers carrying the sender's log scope (an API call's request id, the tenant) to
# the task it enqueues; the worker restores them (workers.base).
CONTEXT_HEADERS = {"request_id": "imagine_request_id", "tenant": "imagine_tenant"}


def describe_call(name: str, args: Any, kwargs: Any) -> tuple[str, str] | None:
    """What events show of a call of task `name` (argsrepr, kwargsrepr): `job_id='…', slot=0`,
    with a request, or any argument the task does not name, withheld; None for a task the
    pipeline does not know."""
    params = TASK_PARAMETERS.get(name)
    if params is None:
        return None
    positional = list(args) if isinstance(args, (list, tuple)) else []
    values: dict[str, Any] = dict(zip(params, positional, strict=False))
    values.update(kwargs if isinstance(kwargs, dict) else {})
    shown = [
        f"{key}={value!r}" if key in params and key not in WITHHELD else f"{key}=<withheld>"
        for key, value in values.items()
    ]
    if len(positional) > len(params):
        shown.append(f"<{len(positional) - len(params)} more withheld>")
    return ", ".join(shown), "{}"


def context_headers() -> dict[str, str]:
    """The headers that carry the current log scope into a message."""
    context = log_context()
    return {
        header: str(context[key]) for key, header in CONTEXT_HEADERS.items() if context.get(key)
    }


def send_create_job(
    app: Celery, request: Any, tenant: str, idempotency_key: str | None = None
) -> Any:
    """Enqueue a job by name (`imagine.create_job`) as a trusted service, with the request
    withheld from Celery's events; the worker withholds it too from a message sent otherwise."""
    args = [request, tenant, idempotency_key]
    argsrepr, kwargsrepr = describe_call("imagine.create_job", args, {}) or ("", "")
    return app.send_task(
        "imagine.create_job",
        args=args,
        queue=SUBMIT_QUEUE,
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
        headers=context_headers(),
    )


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
        # A task that ends in FAILURE is acknowledged, never redelivered: the pipeline's own
        # failures (a job that ended without its images) are raised after they are recorded.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            # Behind Sentinel: the master's name and how to reach the sentinels.
            **broker_transport_options(settings),
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

    def _send(self, name: str, args: list[Any], queue: str, countdown: float = 0) -> None:
        argsrepr, kwargsrepr = describe_call(name, args, {}) or ("", "")
        self._app.send_task(
            name,
            args=args,
            queue=queue,
            countdown=countdown or None,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            headers=context_headers(),
        )

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        self._send("imagine.submit_job", [job_id], SUBMIT_QUEUE, countdown)

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        self._send("imagine.finalize_slot", [job_id, slot], FINALIZE_QUEUE, countdown)

    def notify_job(self, job_id: str) -> None:
        self._send("imagine.notify_job", [job_id], NOTIFY_QUEUE)

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
