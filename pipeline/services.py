"""`JobService`: the pipeline's one entry object, over the use-case modules.

Each use case lives in its own module (enqueue, submission, intake, promotion, completion,
deadline, recovery, callbacks) as functions of a `Context`; this class only names them, so the
receiver, the workers, the CLI and a service embedding the pipeline call one object."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline import (
    admission,
    callback_log,
    callbacks,
    completion,
    deadline,
    documents,
    enqueue,
    events,
    failures,
    intake,
    promotion,
    quotas,
    recovery,
    stats,
    submission,
)
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.interfaces import Dispatcher, JobStore, ObjectStorage
from pipeline.models import (
    CallbackOutcome,
    CircuitState,
    Job,
    JobState,
    PromoteOutcome,
    SlotResult,
    SubmitOutcome,
)
from pipeline.storage import KeyLayout


@dataclass(frozen=True)
class PipelineStatus:
    """What an operator's dashboard reads: work in flight and what holds it back."""

    jobs_active: int
    images_in_flight: int
    circuit: CircuitState
    queue_lengths: dict[str, int]
    mismatches: dict[str, int] = field(default_factory=dict)  # stored images unlike the request
    model_circuits: list[CircuitState] = field(default_factory=list)  # models paused alone


class JobService:
    """Every use case of the pipeline; build one with `pipeline.wiring.build_service`."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def store(self) -> JobStore:
        return self.context.store

    @property
    def storage(self) -> ObjectStorage:
        return self.context.storage

    @property
    def dispatcher(self) -> Dispatcher:
        return self.context.dispatcher

    @property
    def layout(self) -> KeyLayout:
        return self.context.layout

    # --- enqueue and read
    def create_job(
        self, body: Any, tenant: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        return enqueue.create_job(self.context, body, tenant, idempotency_key)

    def create_job_from_message(
        self, body: Any, tenant: str, idempotency_key: str | None, message_id: str
    ) -> Job:
        return enqueue.create_job_from_message(
            self.context, body, tenant, idempotency_key, message_id
        )

    def create_refused_job(
        self, body: Any, tenant: str, errors: dict[str, Any], idempotency_key: str | None = None
    ) -> Job:
        return enqueue.create_refused_job(self.context, body, tenant, errors, idempotency_key)

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        return enqueue.get_job(self.context, job_id, tenant)

    def find_job(self, ident: str) -> Job:
        return enqueue.find_job(self.context, ident)

    def list_jobs(
        self,
        tenant: str,
        *,
        state: JobState | None = None,
        cursor: float | None = None,
        limit: int = 50,
        since: float | None = None,
    ) -> tuple[list[Job], float | None]:
        """A tenant's jobs, newest first, created at `since` or later when given."""
        return self.store.list_jobs(tenant, state=state, cursor=cursor, limit=limit, since=since)

    def daily_stats(self, days: int, tenant: str | None = None) -> list[stats.DayStats]:
        """Each UTC day's counters, today first, of `tenant` or of every tenant counted."""
        return stats.daily_stats(self.context, days, tenant)

    def job_view(self, job: Job) -> dict[str, Any]:
        """The job as the API shows it, with fresh URLs of its stored images and its manifest
        (null while RESULT_URL_SECONDS is 0)."""
        view = documents.job_view(job, documents.presigner(self.context))
        view["callbacks"] = self.callback_attempts(job.id) if job.callback_url else []
        return view

    def image_url(self, job_id: str, slot: int, tenant: str | None = None) -> documents.ResultURL:
        """A fresh presigned URL of one stored image; another tenant's job is missing."""
        return documents.image_url(self.context, self.get_job(job_id, tenant), slot)

    # --- submit, receive, store
    def submit_job(self, job_id: str, *, probe: bool = False) -> SubmitOutcome:
        return submission.submit_job(self.context, job_id, probe=probe)

    def receive_webhook(self, task_uuid: str, body: Any) -> list[SlotResult]:
        return intake.receive_webhook(self.context, task_uuid, body)

    def accept_webhook(self, task_uuid: str, body: Any) -> list[SlotResult]:
        return intake.accept_webhook(self.context, task_uuid, body)

    def promote_slot(self, job_id: str, slot: int, *, allow_fetch: bool = False) -> PromoteOutcome:
        return promotion.promote_slot(self.context, job_id, slot, allow_fetch=allow_fetch)

    def finalize_slot(self, job_id: str, slot: int) -> PromoteOutcome:
        return promotion.finalize_slot(self.context, job_id, slot)

    # --- end
    def finish_job(self, job_id: str) -> bool:
        return completion.finish_job(self.context, job_id)

    def cancel_job(self, job_id: str, tenant: str | None = None) -> Job:
        return completion.cancel_job(self.context, job_id, tenant)

    def expire_job(self, job_id: str) -> None:
        deadline.expire_job(self.context, job_id)

    def send_callback(self, job_id: str) -> CallbackOutcome:
        return callbacks.send_callback(self.context, job_id)

    def announce_end(self, job_id: str) -> CallbackOutcome:
        """An ended job's callback, then `failures.JobFailed` if it ended without its images."""
        outcome = callbacks.send_callback(self.context, job_id)
        failures.raise_if_failed(self.context, job_id)
        return outcome

    # --- operate
    def reconcile(self) -> recovery.ReconcilePass:
        return recovery.reconcile(self.context)

    def retry_job(self, job_id: str, slots: list[int] | None = None) -> Job:
        return recovery.retry_job(self.context, job_id, slots)

    def replay_dead_letters(self, limit: int = 100) -> list[str]:
        return recovery.replay_dead_letters(self.context, limit)

    def circuit(self) -> CircuitState:
        return self.context.circuit.state()

    def model_circuits(self) -> list[CircuitState]:
        """The circuits of models paused on their own (the account still submits)."""
        return self.context.circuit.open_models()

    def reset_circuit(self) -> None:
        admission.reset_circuit(self.context)

    # --- callbacks, the operator's pause, events
    def callback_attempts(self, job_id: str) -> list[dict[str, Any]]:
        return callback_log.callback_attempts(self.context, job_id)

    def resend_callback(self, job_id: str) -> str:
        """Deliver the job's end event again; its webhook-id."""
        return callbacks.resend_callback(self.context, job_id)

    def pause_submissions(self, reason: str) -> bool:
        return quotas.pause_submissions(self.context, reason)

    def resume_submissions(self) -> int:
        """Lift the pause; how many held jobs were nudged."""
        return quotas.resume_submissions(self.context)

    def submissions_paused(self) -> quotas.SubmissionPause | None:
        return quotas.submissions_paused(self.context)

    def follow_events(
        self, since: str = "$", block_ms: int | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return events.follow_events(self.context, since=since, block_ms=block_ms)

    def status(self) -> PipelineStatus:
        budget = self.context.budget.in_use() if self.settings.runware_api_key else 0
        return PipelineStatus(
            jobs_active=self.store.active_count(),
            images_in_flight=budget,
            circuit=self.circuit(),
            queue_lengths=self.dispatcher.queue_lengths(),
            mismatches=self.store.mismatches(),
            model_circuits=self.model_circuits(),
        )
