"""Jobs, image slots, their states and the outcomes of each step, defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class SlotState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    RECEIVED = "received"
    STORED = "stored"
    FAILED = "failed"
    DISCARDED = "discarded"
    DEAD = "dead"


JOB_STATES = tuple(JobState)
JOB_OPEN = frozenset({JobState.QUEUED, JobState.RUNNING})
JOB_TERMINAL = frozenset(set(JobState) - JOB_OPEN)
# A job ended before its images did: late results are recorded as discarded, never promoted.
JOB_ENDED_EARLY = frozenset({JobState.CANCELLED, JobState.TIMED_OUT})

SLOT_STATES = tuple(SlotState)
SLOT_OPEN = (SlotState.PENDING, SlotState.SUBMITTED, SlotState.RECEIVED)
SLOT_TERMINAL = frozenset(set(SlotState) - set(SLOT_OPEN))
# A slot whose image the provider has not reported yet: only these take a result.
AWAITING_RESULT = (SlotState.PENDING, SlotState.SUBMITTED)


class ResultOutcome(StrEnum):
    """What one provider result did to its slot."""

    RECEIVED = "received"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD = "dead"
    DISCARDED = "discarded"
    DUPLICATE = "duplicate"
    STALE = "stale"
    PROCESSING = "processing"
    RESUBMITTING = "resubmitting"  # not found: sent again under the same taskUUID


class PromoteOutcome(StrEnum):
    """What promoting a received image did."""

    STORED = "stored"
    MISSING = "missing"  # the upload is not there (yet): try again later
    REJECTED = "rejected"
    UPLOAD_MISSING = "upload_missing"  # no upload and no imageURL after UPLOAD_WAIT_SECONDS
    DISCARDED = "discarded"
    NOOP = "noop"


class SubmitOutcome(StrEnum):
    DONE = "done"
    PAUSED = "paused"
    WAITING = "waiting"
    SUBMITTED = "submitted"
    EXPIRED = "expired"


class CallbackOutcome(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    REFUSED = "refused"  # the URL failed its check at send time
    UNSIGNED = "refused:unsigned"
    REJECTED = "rejected"  # the receiver answered 4xx
    RETRYING = "retrying"  # the receiver was down or busy: another attempt is scheduled
    GAVE_UP = "gave_up"  # down or busy until the retry window was spent


@dataclass(frozen=True)
class SlotResult:
    """Where a provider result landed and what it did."""

    job_id: str
    slot: int
    outcome: ResultOutcome
    settled: bool = False  # the slot had already ended: nothing of it is left to store


@dataclass
class Slot:
    """One requested image: one Runware task per attempt, one final key."""

    job_id: str
    slot: int
    state: SlotState
    attempt: int = 1
    task_uuid: str | None = None
    task_attempt: int | None = None
    previous_task_uuids: list[str] = field(default_factory=list)
    # Each retired attempt, oldest first (attempt, taskUUID, state, model, code, message and
    # epoch times submittedAt, receivedAt, endedAt), as the step that retired it wrote it.
    history: list[dict[str, Any]] = field(default_factory=list)
    submitted_at: float | None = None
    received_at: float | None = None
    stored_at: float | None = None
    updated_at: float | None = None
    image_uuid: str | None = None
    image_url: str | None = None
    seed: int | None = None
    cost: float | None = None
    nsfw: bool | None = None
    error_code: str | None = None
    error_message: str | None = None
    final_key: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    etag: str | None = None
    # What the image actually is (`width`/`height` above) against what was asked: a paid image
    # of another size or format is stored and flagged, never thrown away.
    format: str | None = None
    requested_width: int | None = None  # None when the request allowed several sizes (an edit)
    requested_height: int | None = None
    requested_format: str | None = None
    size_mismatch: bool | None = None
    format_mismatch: bool | None = None
    # The model the current task was sent on (the job's model or its fallback); set before the
    # task is sent, so a resend under the same taskUUID keeps it.
    model: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in SLOT_TERMINAL


@dataclass
class Job:
    """A request for N images of one model, owned by one tenant."""

    id: str
    tenant: str
    state: JobState
    model: str
    params: dict[str, Any]
    slot_count: int
    output_format: str
    created_at: float
    updated_at: float
    deadline_at: float
    reason: str | None = None
    # Used for images not sent yet while `model` is paused or refused as unknown (never silently).
    fallback_model: str | None = None
    client_task_uuid: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    manifest_key: str | None = None
    manifest_version: int = 0
    ended_at: float | None = None
    slots: list[Slot] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in JOB_TERMINAL

    @property
    def cost(self) -> float | None:
        """What the provider reported for this job's images; None before any report."""
        costs = [slot.cost for slot in self.slots if slot.cost is not None]
        return round(sum(costs), 6) if costs else None

    def slot(self, number: int) -> Slot | None:
        return next((slot for slot in self.slots if slot.slot == number), None)


@dataclass(frozen=True)
class CircuitState:
    """Whether submission is paused by an account- or model-level provider error, and why."""

    open: bool = False
    code: str | None = None
    message: str | None = None
    opened_at: float | None = None
    probe_at: float | None = None
    model: str | None = None  # a model circuit: only this model's jobs wait


@dataclass(frozen=True)
class DeadLetter:
    """A slot whose retry budget is spent, waiting for an operator."""

    job_id: str
    slot: int
    code: str
    message: str
    at: float
