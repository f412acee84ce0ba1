"""The project's base task: late acks, one service per process, and the one place that decides
whether a failure is retried (the error says so) and when (backoff with jitter, capped)."""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Task, signals
from celery.worker.request import Request

from pipeline.config import Settings
from pipeline.dispatch import (
    CONTEXT_HEADERS,
    TASK_PARAMETERS,
    WITHHELD,
    CeleryDispatcher,
    describe_call,
)
from pipeline.errors import PipelineError, Retryable
from pipeline.logs import bind_log_context, configure_logging, reset_log_context
from pipeline.services import JobService
from pipeline.wiring import build_service

log = logging.getLogger(__name__)
# The log scope of each task running in this process, by task id (task_prerun to postrun).
_scopes: dict[str, Any] = {}


def is_retryable(exc: BaseException) -> bool:
    """A failure the same call may get past later: the pipeline's own transient errors, and
    Redis being unreachable for a moment (or, during a failover, still read-only, or refusing
    writes until a replica is back: NOREPLICAS, min-replicas-to-write)."""
    if isinstance(exc, PipelineError):
        return exc.retryable
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOREPLICAS"):
        return True
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError))


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
        shown = describe_call(self.name, self.request.args, self.request.kwargs)
        argsrepr, kwargsrepr = shown if shown is not None else (None, None)
        return self.retry(
            exc=exc,
            countdown=self.countdown(exc),
            max_retries=limit,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
        )

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


class QuietRequest(Request):  # type: ignore[misc]
    """A request of a routine task (the reconciler's pass, every few seconds) that Flower shows
    only when it fails or is retried: its received, started and succeeded events are not sent,
    so they do not bury the pipeline's own tasks. The task sets `send_events = False` (no
    received event) and `Request` to this class."""

    SHOWN = frozenset({"task-failed", "task-retried", "task-rejected"})

    def send_event(self, type: str, **fields: Any) -> None:
        if type in self.SHOWN and self._eventer and self._eventer.enabled:
            # Flower never saw it received: the name and arguments come with the failure.
            self._eventer.send(
                type,
                uuid=self.id,
                name=self.name,
                args=self.argsrepr,
                kwargs=self.kwargsrepr,
                **fields,
            )


def _header(request: Any, name: str) -> Any:
    return getattr(request, name, None) or (getattr(request, "headers", None) or {}).get(name)


def open_log_scope(task_id: str, task: Task, args: Any = (), kwargs: Any = None, **_: Any) -> None:
    """task_prerun: every record of the task carries its job, slot and tenant, and the request
    id of the API call that enqueued it (message headers set by `CeleryDispatcher`)."""
    named: dict[str, Any] = dict(zip(TASK_PARAMETERS.get(task.name, ()), args or (), strict=False))
    named.update(kwargs if isinstance(kwargs, dict) else {})
    request = task.request
    _scopes[task_id] = bind_log_context(
        request_id=_header(request, CONTEXT_HEADERS["request_id"]),
        job_id=named.get("job_id"),
        tenant=named.get("tenant") or _header(request, CONTEXT_HEADERS["tenant"]),
        slot=named.get("slot"),
        task_id=task_id,
        task=task.name,
    )


def close_log_scope(task_id: str, **_: Any) -> None:
    """task_postrun: after Celery's own line about the task's outcome."""
    token = _scopes.pop(task_id, None)
    if token is not None:
        reset_log_context(token)


def withhold_arguments(request: Any, **_: Any) -> None:
    """task_received: a job request sent by name without `pipeline.dispatch.send_create_job`
    still never reaches Celery's events (and Flower) or its log records: the arguments
    shown are replaced before the worker's first event about the task."""
    if WITHHELD.isdisjoint(TASK_PARAMETERS.get(request.name, ())):
        return
    described = describe_call(request.name, request.args, request.kwargs)
    if described is None:
        return
    request._argsrepr, request._kwargsrepr = described
    request.request_dict["argsrepr"], request.request_dict["kwargsrepr"] = described


def connect_signals(app: Any, settings: Settings) -> None:
    """The worker's and beat's hooks into Celery: JSON from the first line, each task's log
    scope, requests withheld from events, and no event for each reconciler message beat sends.
    """
    if settings.log_format == "json":
        # Beat prints its banner (text) before any signal: start it quiet, as `celery -q` does.
        beat = app.Beat

        class QuietBeat(beat):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **{**kwargs, "quiet": True})

        app.Beat = QuietBeat

    def start_quietly(instance: Any, **_: Any) -> None:
        # Before the privilege check's warning: it becomes a record like every other line,
        # and the banner (text on stdout) gives way to one JSON line.
        configure_logging(settings.log_level, settings.log_format)
        logging.captureWarnings(True)  # what Celery does later, in time for that warning
        if settings.log_format == "json":
            instance.quiet = True

    def announce(sender: str, instance: Any, **_: Any) -> None:
        queues = getattr(instance.app.amqp.queues, "consume_from", None) or {}
        log.info(
            "worker started",
            extra={
                "hostname": sender,
                "concurrency": getattr(instance, "concurrency", None),
                "queues": sorted(queues),
            },
        )

    def beat_without_sent_events(sender: Any, **_: Any) -> None:
        # Beat only sends the reconciler's message: a task-sent event for each would list
        # every pass in Flower, which shows a pass only when it fails (QuietRequest).
        sender.app.conf.task_send_sent_event = False
        log.info("beat started", extra={"schedule": sorted(sender.app.conf.beat_schedule)})

    # Each once per process, however many apps a process builds (dispatch_uid).
    hooks = (
        (signals.celeryd_init, start_quietly),
        (signals.celeryd_after_setup, announce),
        (signals.beat_init, beat_without_sent_events),
        (signals.task_received, withhold_arguments),
        (signals.task_prerun, open_log_scope),
        (signals.task_postrun, close_log_scope),
    )
    for signal, hook in hooks:
        signal.connect(hook, weak=False, dispatch_uid=f"imagine.{hook.__name__}")
