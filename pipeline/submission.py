"""Submission: one Runware task per pending image, its taskUUID stored before Runware sees it,
within the in-flight budget and only while the circuit is closed and no operator has paused it."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

from pipeline import admission, clock, quotas, tracing
from pipeline.completion import fail_slot, finish_job
from pipeline.context import Context
from pipeline.deadline import expire_job
from pipeline.errors import ProviderError
from pipeline.intake import backoff, record_results, retry_or_dead
from pipeline.models import Job, JobState, Slot, SlotState, SubmitOutcome
from pipeline.runware import TaskOutcome
from pipeline.schemas import check_outgoing_task
from pipeline.signing import webhook_token

log = logging.getLogger(__name__)

MAX_TASKS_PER_REQUEST = 20
MAX_PRESIGN_SECONDS = 7 * 86400  # SigV4 presigned URLs live at most 7 days


@tracing.job_span("imagine.submit", job_id="job_id")
def submit_job(ctx: Context, job_id: str, *, probe: bool = False) -> SubmitOutcome:
    """Send every pending image slot of a job to Runware; safe to run any number of times.
    A transient failure raises a retryable `ProviderError`: the retry reuses the taskUUIDs."""
    job = ctx.store.get_job(job_id)
    if job is None or job.terminal:
        return SubmitOutcome.DONE
    if clock.now() >= job.deadline_at:
        expire_job(ctx, job_id)
        return SubmitOutcome.EXPIRED
    pending = [slot for slot in job.slots if slot.state == SlotState.PENDING]
    # The operator's pause holds even a probe: nothing is sent until it is lifted, and the
    # job is queued to be nudged then.
    held = quotas.held_by_pause(ctx, job_id) if pending else None
    if held:
        ctx.store.set_job_fields(job_id, reason=held)
        return SubmitOutcome.PAUSED
    model, why = admission.choose_model(ctx, job.model, job.fallback_model)
    if model is None and pending and not probe:
        ctx.store.set_job_fields(job_id, reason=why)
        return SubmitOutcome.PAUSED
    ctx.store.transition_job(job_id, [JobState.QUEUED], JobState.RUNNING)
    if not pending:
        finish_job(ctx, job_id)
        return SubmitOutcome.DONE
    slots = claim_task_uuids(ctx, job, pending)
    granted, budget_full = admit(ctx, job, slots)
    if not granted:
        return SubmitOutcome.WAITING
    granted_slots = {task_uuid: slots[task_uuid] for task_uuid in granted}
    # A probe goes past the open circuit on the job's own model.
    sent = send(ctx, job, granted_slots, model or job.model, probe, budget_full)
    if len(slots) > len(granted) and not budget_full:
        ctx.dispatcher.submit_job(job.id)  # more than one request's worth: the rest next
    return sent


def claim_task_uuids(ctx: Context, job: Job, pending: list[Slot]) -> dict[str, Slot]:
    """The taskUUID of each pending slot's current attempt, minted and stored if new."""
    slots: dict[str, Slot] = {}
    for slot in pending:
        task_uuid = ctx.store.mint_task_uuid(job.id, slot.slot, slot.attempt, str(uuid.uuid4()))
        if task_uuid:
            slots[task_uuid] = slot
    return slots


def admit(ctx: Context, job: Job, slots: dict[str, Slot]) -> tuple[list[str], bool]:
    """Leases for as many tasks as the key's budget allows; the job waits for the rest.

    Returns the granted taskUUIDs and whether some image still pending waits for the budget.
    A lease is refused to a slot that is no longer pending (another submit sent it, or its
    result came): that is not waiting."""
    ctx.settings.require_runware_key()
    ttl = max(60.0, job.deadline_at - clock.now()) + ctx.settings.upload_url_margin_seconds
    asked = list(slots)[:MAX_TASKS_PER_REQUEST]
    granted = ctx.budget.acquire(asked, ctx.settings.runware_max_in_flight, ttl)
    refused = [task_uuid for task_uuid in asked if task_uuid not in granted]
    if not any(still_pending(ctx, job.id, slots[task_uuid], task_uuid) for task_uuid in refused):
        return granted, False
    # Woken as soon as a lease is given back; the delayed nudge covers a lost wake-up.
    ctx.store.set_job_fields(job.id, reason=admission.BUDGET_REASON)
    ctx.budget.wait(job.id)
    ctx.dispatcher.submit_job(job.id, countdown=ctx.settings.budget_wait_seconds)
    return granted, True


def still_pending(ctx: Context, job_id: str, slot: Slot, task_uuid: str) -> bool:
    current = ctx.store.get_slot(job_id, slot.slot)
    return (
        current is not None
        and current.state == SlotState.PENDING
        and current.task_uuid == task_uuid
    )


def send(
    ctx: Context,
    job: Job,
    slots: dict[str, Slot],
    model: str,
    probe: bool,
    budget_full: bool = False,
) -> SubmitOutcome:
    """POST the granted tasks in one body and record what Runware said of each."""
    models = pin_models(ctx, job, slots, model)
    tasks = [
        task_payload(ctx, job, slot, task_uuid, models[task_uuid])
        for task_uuid, slot in slots.items()
    ]
    tracing.annotate(
        tenant=job.tenant, task_uuid=list(slots), slot=[slot.slot for slot in slots.values()]
    )
    try:
        outcomes = ctx.runware().submit(tasks)
    except ProviderError as exc:
        if exc.retryable:
            raise  # the outcome is unknown: the retry reuses these taskUUIDs and their models
        return refused(ctx, job, slots, models, exc)
    if probe:
        close_probed_circuits(ctx, outcomes, models)
    now = clock.now()
    for task_uuid, outcome in outcomes.items():
        apply_outcome(ctx, job, slots[task_uuid], task_uuid, models[task_uuid], outcome, now)
    ctx.store.set_job_fields(job.id, reason=waiting_reason(ctx, job.id, budget_full))
    finish_job(ctx, job.id)
    return SubmitOutcome.SUBMITTED


def pin_models(ctx: Context, job: Job, slots: dict[str, Slot], model: str) -> dict[str, str]:
    """The model each task is sent on, stored on its slot before Runware sees it: a task sent
    before (its answer lost) keeps its model, so a resend never moves a paid image."""
    models: dict[str, str] = {}
    for task_uuid, slot in slots.items():
        if slot.model:
            models[task_uuid] = slot.model
            continue
        ctx.store.transition_slot(
            job.id,
            slot.slot,
            [SlotState.PENDING],
            SlotState.PENDING,
            task_uuid=task_uuid,
            model=model,
        )
        models[task_uuid] = model
    moved = sorted(slots[task_uuid].slot for task_uuid, air in models.items() if air != job.model)
    if moved:
        log.warning(
            "images sent on the fallback model",
            extra={"job_id": job.id, "model": job.model, "fallback": model, "slots": moved},
        )
    return models


def unpin_models(ctx: Context, job: Job, slots: dict[str, Slot]) -> None:
    """Tasks Runware refused for their model were never accepted: they may go on another."""
    for task_uuid, slot in slots.items():
        ctx.store.transition_slot(
            job.id, slot.slot, [SlotState.PENDING], SlotState.PENDING, task_uuid=task_uuid, model=""
        )


def close_probed_circuits(
    ctx: Context, outcomes: dict[str, TaskOutcome], models: dict[str, str]
) -> None:
    """A probe's request went through: each circuit no task's answer contradicts closes (a
    model's circuit only when a task was sent on it)."""
    kinds = {outcome.error.kind for outcome in outcomes.values() if outcome.error}
    if ProviderError.ACCOUNT not in kinds:
        admission.close_circuit(ctx)
    faulty = {
        models[task_uuid]
        for task_uuid, outcome in outcomes.items()
        if outcome.error and outcome.error.kind == ProviderError.MODEL
    }
    for air in set(models.values()) - faulty:
        admission.close_circuit(ctx, air)


def waiting_reason(ctx: Context, job_id: str, budget_full: bool) -> str | None:
    """Why a job still has images waiting to be sent (a paused circuit, the budget), or None
    once none waits: the job's `reason` says only what is true."""
    job = ctx.store.get_job(job_id)
    if job is None:
        return None
    _model, why = admission.choose_model(ctx, job.model, job.fallback_model)
    if not any(slot.state == SlotState.PENDING for slot in job.slots):
        # Images made by the fallback stay explained after every image was sent.
        return fallback_note(job)
    if why:
        return why
    return admission.BUDGET_REASON if budget_full else fallback_note(job)


def fallback_note(job: Job) -> str | None:
    """Why some of a job's images were sent on its fallback model, or None."""
    moved = [slot.slot for slot in job.slots if slot.model and slot.model != job.model]
    if not moved:
        return None
    slots = ", ".join(map(str, moved))
    return (
        f"model {job.model} was paused or refused by the provider: "
        f"slots {slots} sent on fallbackModel {job.fallback_model}"
    )


def refused(
    ctx: Context, job: Job, slots: dict[str, Slot], models: dict[str, str], exc: ProviderError
) -> SubmitOutcome:
    """The whole request was refused: the account or the model (pause), an answer that leaves
    the tasks' fate open (send them again under the same taskUUIDs), or the tasks (fail)."""
    task_uuids = list(slots)
    if exc.kind in {ProviderError.ACCOUNT, ProviderError.MODEL}:
        model = None
        if exc.kind == ProviderError.MODEL:
            # One model in the request is the model refused; a mix names none: the job's own.
            sent = set(models.values())
            model = sent.pop() if len(sent) == 1 else job.model
            unpin_models(ctx, job, slots)
        admission.open_circuit(ctx, exc, model)
        admission.release(ctx, task_uuids)
        return paused_or_fallback(ctx, job)
    if exc.kind != ProviderError.PERMANENT:
        # conflictTaskUUID or not-found that names no task among several: the same taskUUIDs
        # again can only meet the tasks Runware holds, never pay for one twice.
        admission.release(ctx, task_uuids)
        ctx.dispatcher.submit_job(job.id, countdown=backoff(ctx, 1, exc.retry_after))
        return SubmitOutcome.WAITING
    for task_uuid, slot in slots.items():
        fail_slot(ctx, job.id, slot.slot, task_uuid, exc.provider_code or "rejected", exc.message)
    admission.release(ctx, task_uuids)
    finish_job(ctx, job.id)
    return SubmitOutcome.SUBMITTED


def paused_or_fallback(ctx: Context, job: Job) -> SubmitOutcome:
    """After a pause: the job waits with the reason, or its images go on to the fallback."""
    model, why = admission.choose_model(ctx, job.model, job.fallback_model)
    ctx.store.set_job_fields(job.id, reason=why)
    if model is not None:
        ctx.dispatcher.submit_job(job.id)
    return SubmitOutcome.PAUSED


def apply_outcome(
    ctx: Context,
    job: Job,
    slot: Slot,
    task_uuid: str,
    model: str,
    outcome: TaskOutcome,
    now: float,
) -> None:
    """One task's answer: accepted (maybe with its result already), or refused on its own."""
    if outcome.accepted:
        ctx.store.transition_slot(
            job.id,
            slot.slot,
            [SlotState.PENDING],
            SlotState.SUBMITTED,
            task_uuid=task_uuid,
            submitted_at=repr(now),
            model=model,
        )
        if outcome.results:
            record_results(ctx, task_uuid, outcome.results, (job.id, slot.slot))
        return
    error = outcome.error or ProviderError(
        "Runware did not acknowledge this task", kind=ProviderError.TRANSIENT
    )
    code = error.provider_code or "rejected"
    if error.kind == ProviderError.PERMANENT:
        fail_slot(ctx, job.id, slot.slot, task_uuid, code, error.message)
    elif error.kind == ProviderError.UNKNOWN:
        # A refusal no row of the error table knows: a new attempt, within SLOT_MAX_ATTEMPTS.
        retry_or_dead(ctx, job.id, slot, task_uuid, code, error.message)
    elif error.kind == ProviderError.ACCOUNT:
        admission.open_circuit(ctx, error)
    elif error.kind == ProviderError.MODEL:
        admission.open_circuit(ctx, error, model)
        unpin_models(ctx, job, {task_uuid: slot})
        if admission.choose_model(ctx, job.model, job.fallback_model)[0] is not None:
            ctx.dispatcher.submit_job(job.id)
    else:
        ctx.dispatcher.submit_job(job.id, countdown=backoff(ctx, 1, error.retry_after))
    admission.release(ctx, [task_uuid])


def webhook_url(ctx: Context, task_uuid: str) -> str:
    token = webhook_token(ctx.settings.require_webhook_secrets()[0], task_uuid)
    return f"{ctx.settings.public_base_url}/webhooks/runware/{task_uuid}?token={quote(token)}"


def task_payload(
    ctx: Context, job: Job, slot: Slot, task_uuid: str, model: str | None = None
) -> dict[str, Any]:
    """The `imageInference` task of one slot on `model` (by default the slot's, else the job's),
    checked against its schema before it is sent."""
    remaining = max(60, int(job.deadline_at - clock.now()))
    expires = remaining + ctx.settings.upload_url_margin_seconds
    payload: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": model or slot.model or job.model,
        "positivePrompt": job.params["positivePrompt"],
    }
    for name in ("width", "height", "resolution", "outputQuality", "inputs", "safety"):
        if name in job.params:
            payload[name] = job.params[name]
    payload.update(
        {
            "outputFormat": job.output_format,
            "outputType": "URL",
            "numberResults": 1,
            "deliveryMethod": "async",
            "includeCost": True,
            "ttl": expires,
            "webhookURL": webhook_url(ctx, task_uuid),
            "uploadEndpoint": ctx.storage.presign_put(
                ctx.layout.staging(job.id, task_uuid), min(expires, MAX_PRESIGN_SECONDS)
            ),
        }
    )
    return check_outgoing_task(payload)
