"""Intake: provider results (webhooks, polls, acknowledgements) fed into their slots, idempotent
and monotonic; a replayed or late result changes nothing once its slot has ended."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from marshmallow import ValidationError

from pipeline import admission, clock, metrics, tracing
from pipeline.completion import fail_slot, finish_job, rewrite_manifest
from pipeline.context import Context
from pipeline.errors import ImageRejected, NotFound, ProviderError, RequestInvalid, StorageError
from pipeline.logs import add_log_context
from pipeline.models import (
    AWAITING_RESULT,
    JOB_ENDED_EARLY,
    JOB_TERMINAL,
    JobState,
    PromoteOutcome,
    ResultOutcome,
    Slot,
    SlotResult,
    SlotState,
)
from pipeline.promotion import promote_slot
from pipeline.runware import kind_of_code
from pipeline.schemas import ProviderResult, parse_provider_body, untied_error_result
from pipeline.storage import BudgetedObjectStorage

log = logging.getLogger(__name__)

# A result worth promoting now: just received, or received before and not stored yet.
PROMOTABLE = (ResultOutcome.RECEIVED, ResultOutcome.DUPLICATE)


@tracing.job_span("imagine.webhook", task_uuid="task_uuid")
def receive_webhook(ctx: Context, task_uuid: str, body: Any) -> list[SlotResult]:
    """Record a webhook (its token already checked), then store each received image at once
    while INLINE_PROMOTE_BUDGET_SECONDS last (Runware retries a webhook not answered within
    about 5 s); a worker on the finalize queue takes over whatever is left."""
    outcomes = accept_webhook(ctx, task_uuid, body)
    promotable = [o for o in outcomes if o.outcome in PROMOTABLE and not o.settled]
    if not promotable:  # a replay of an image that has ended, a failure, a placeholder
        return outcomes
    deadline = time.monotonic() + ctx.settings.inline_promote_budget_seconds
    inline = replace(
        ctx,
        storage=BudgetedObjectStorage(
            ctx.inline_storage or (lambda _seconds: ctx.storage),
            deadline,
            ctx.settings.inline_promote_timeout_seconds,
        ),
    )
    for outcome in promotable:
        if promote_inline(inline, outcome, deadline) == PromoteOutcome.MISSING:
            ctx.dispatcher.finalize_slot(
                outcome.job_id, outcome.slot, countdown=ctx.settings.finalize_retry_seconds
            )
    return outcomes


def promote_inline(ctx: Context, outcome: SlotResult, deadline: float) -> PromoteOutcome:
    """Promote one received image within what is left of the webhook's budget; MISSING hands
    it to a worker."""
    if time.monotonic() >= deadline:
        log.info(
            "inline promotion budget spent: handed to a worker",
            extra={"job_id": outcome.job_id, "slot": outcome.slot},
        )
        return PromoteOutcome.MISSING
    try:
        return promote_slot(ctx, outcome.job_id, outcome.slot)
    except (StorageError, ImageRejected) as exc:
        log.warning(
            "inline promotion deferred",
            extra={"job_id": outcome.job_id, "slot": outcome.slot, "error": exc.message},
        )
        return PromoteOutcome.MISSING


def accept_webhook(ctx: Context, task_uuid: str, body: Any) -> list[SlotResult]:
    """Record what a webhook says about one task."""
    found = ctx.store.locate_task(task_uuid)
    if found is None:
        raise NotFound(f"no task {task_uuid}")
    add_log_context(job_id=found[0], slot=found[1])  # the rest of this webhook's lines
    try:
        results, untied = parse_provider_body(body)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise RequestInvalid("the webhook body is not a Runware result", messages) from None
    others = {result.task_uuid for result in results} - {task_uuid}
    if others:
        raise RequestInvalid(
            "the body names another task than the URL", {"taskUUID": sorted(others)}
        )
    if not results and untied:
        results = [untied_error_result(task_uuid, untied[0])]
    if not results:
        raise RequestInvalid("the webhook body holds no result", {"data": ["empty"]})
    job_id, slot_no, slot, job_state = found
    tracing.annotate(job_id=job_id, slot=slot_no)
    return record_results(ctx, task_uuid, results, (job_id, slot_no), (slot, job_state))


def record_results(
    ctx: Context,
    task_uuid: str,
    results: list[ProviderResult],
    location: tuple[str, int] | None = None,
    read: tuple[Slot | None, JobState | None] | None = None,
) -> list[SlotResult]:
    """Feed provider results into the slot they belong to (`location`: the job and slot the
    caller already found for the taskUUID, which never change once written; `read`: the slot
    and its job's state as the caller read them, for the first result only, since a result
    may change them)."""
    location = location or ctx.store.find_task(task_uuid)
    if location is None:
        raise NotFound(f"no task {task_uuid}")
    job_id, slot_no = location
    outcomes = []
    for result in results:
        outcomes.append(
            SlotResult(job_id, slot_no, *record_one(ctx, job_id, slot_no, result, read))
        )
        read = None
    if (
        any(
            o.outcome in {ResultOutcome.FAILED, ResultOutcome.DISCARDED, ResultOutcome.DEAD}
            for o in outcomes
        )
        and not finish_job(ctx, job_id)
        and any(o.outcome == ResultOutcome.DISCARDED for o in outcomes)
    ):
        # A charged image that came back after its job ended: the manifest must say so.
        rewrite_manifest(ctx, job_id)
    return outcomes


def record_one(
    ctx: Context,
    job_id: str,
    slot_no: int,
    result: ProviderResult,
    read: tuple[Slot | None, JobState | None] | None = None,
) -> tuple[ResultOutcome, bool]:
    """What one result did to its slot, and whether the slot had already ended."""
    if result.status == "processing":
        return ResultOutcome.PROCESSING, False
    slot, job_state = read or ctx.store.slot_and_job_state(job_id, slot_no)
    if slot is None or job_state is None:
        raise NotFound(f"no job {job_id}")
    if slot.task_uuid != result.task_uuid:
        log.info(
            "result of an earlier attempt ignored",
            extra={"job_id": job_id, "slot": slot_no, "task_uuid": result.task_uuid},
        )
        return ResultOutcome.STALE, False
    settled = slot.terminal
    if result.ok and settled and job_state not in JOB_ENDED_EARLY:
        # A replay for an image that has ended: its state only moves forward (an operator's
        # retry gives it a new taskUUID), and its lease went back when it left `submitted`.
        return ResultOutcome.DUPLICATE, True
    if result.ok:
        return record_image(ctx, job_id, job_state, slot, result), False
    if job_state in JOB_TERMINAL or slot.state not in AWAITING_RESULT:
        # A failure reported for an image that has ended (or a replayed webhook URL) can
        # change nothing: no new attempt, no circuit, no lease.
        return ResultOutcome.DUPLICATE, settled
    return record_failure(ctx, job_id, slot, result), False


def record_image(
    ctx: Context, job_id: str, job_state: JobState, slot: Slot, result: ProviderResult
) -> ResultOutcome:
    """A rendered image: received, or discarded when its job ended early (recorded, with its
    cost, never promoted)."""
    task_uuid = result.task_uuid
    fields = {
        "image_uuid": result.image_uuid,
        "image_url": result.image_url,
        "seed": result.seed,
        "cost": result.cost,
        "nsfw": result.nsfw,
        "received_at": repr(clock.now()),
    }
    if job_state in JOB_ENDED_EARLY:
        allowed = [*AWAITING_RESULT, SlotState.RECEIVED]
        counted = False
        if slot.state == SlotState.FAILED and slot.error_code in {"deadline", "cancelled"}:
            allowed.append(SlotState.FAILED)
            counted = received_before(ctx, job_id, slot.slot)
        applied = ctx.store.transition_slot(
            job_id, slot.slot, allowed, SlotState.DISCARDED, task_uuid=task_uuid, **fields
        )
        admission.release(ctx, [task_uuid])
        if applied and not counted:
            charged_late(ctx, job_id, result.cost)
        return ResultOutcome.DISCARDED if applied else ResultOutcome.DUPLICATE
    applied = ctx.store.transition_slot(
        job_id, slot.slot, AWAITING_RESULT, SlotState.RECEIVED, task_uuid=task_uuid, **fields
    )
    admission.release(ctx, [task_uuid])
    return ResultOutcome.RECEIVED if applied else ResultOutcome.DUPLICATE


def received_before(ctx: Context, job_id: str, slot_no: int) -> bool:
    """Whether a slot that failed as its job ended had been received: its cost was counted as
    it failed (`close_open_slots`), so a replay of its result must not count it again."""
    slot = ctx.store.get_slot(job_id, slot_no)
    return slot is not None and slot.received_at is not None


def charged_late(ctx: Context, job_id: str, cost: float | None) -> None:
    """Count what a result that came after its job ended cost. A rare path: the one step of
    intake that reads the job (for its tenant)."""
    if cost:
        job = ctx.store.get_job(job_id)
        metrics.image_charged(job.tenant if job else "", cost)


def record_failure(ctx: Context, job_id: str, slot: Slot, result: ProviderResult) -> ResultOutcome:
    """An image the provider failed, sorted by the error table (pipeline/runware.py)."""
    task_uuid = result.task_uuid
    code = result.error_code or "providerError"
    message = (result.error_message or "the provider reported an error")[:1000]
    kind = kind_of_code(result.error_code)
    if kind == ProviderError.CONFLICT:
        return ResultOutcome.PROCESSING  # "the task exists": keep waiting for it
    if kind == ProviderError.NOT_FOUND:
        return resubmit_task(ctx, job_id, slot, task_uuid)
    if kind in {ProviderError.ACCOUNT, ProviderError.MODEL}:
        return pause_and_reopen(ctx, job_id, slot, result, kind)
    if kind == ProviderError.PERMANENT:
        applied = fail_slot(ctx, job_id, slot.slot, task_uuid, code, message)
        admission.release(ctx, [task_uuid])
        return ResultOutcome.FAILED if applied else ResultOutcome.DUPLICATE
    if kind == ProviderError.UNKNOWN:
        log.warning(
            "a provider error code the error table does not know: a new attempt",
            extra={"job_id": job_id, "slot": slot.slot, "code": code},
        )
    return retry_or_dead(ctx, job_id, slot, task_uuid, code, message)


def resubmit_task(ctx: Context, job_id: str, slot: Slot, task_uuid: str) -> ResultOutcome:
    """Runware does not find a task: that does not prove it never ran (a task past
    getResponse's retention would be paid twice by a new one, its late webhook dropped as
    stale). Send it again under the same taskUUID through the normal submission path:
    `conflictTaskUUID` says it exists (keep waiting), an acceptance that it never did (this is
    its one charge). The slot keeps its lease: the task may well be in flight."""
    if slot.state == SlotState.SUBMITTED:
        moved = ctx.store.transition_slot(
            job_id, slot.slot, [SlotState.SUBMITTED], SlotState.PENDING, task_uuid=task_uuid
        )
        if not moved:
            return ResultOutcome.DUPLICATE
    log.warning(
        "task not found at the provider: sent again under the same taskUUID",
        extra={"job_id": job_id, "slot": slot.slot, "task_uuid": task_uuid},
    )
    ctx.dispatcher.submit_job(job_id)
    return ResultOutcome.RESUBMITTING


def pause_and_reopen(
    ctx: Context, job_id: str, slot: Slot, result: ProviderResult, kind: str
) -> ResultOutcome:
    """A live image failed for the account or its model: pause (only a live slot's failure
    gets here, so only a live slot's failure opens a circuit) and give the image a new
    taskUUID that waits for the circuit; the retry budget is not spent on it, the deadline
    still bounds the wait."""
    message = (result.error_message or "the provider reported an error")[:1000]
    model = None
    if kind == ProviderError.MODEL:
        job = ctx.store.get_job(job_id)
        model = slot.model or (job.model if job else None)
    admission.open_circuit(
        ctx, ProviderError(message, kind=kind, provider_code=result.error_code), model
    )
    applied = ctx.store.new_attempt(
        job_id,
        slot.slot,
        AWAITING_RESULT,
        slot.attempt,
        task_uuid=result.task_uuid,
        error_code=result.error_code,
        error_message=message,
    )
    admission.release(ctx, [result.task_uuid])
    if not applied:
        return ResultOutcome.DUPLICATE
    metrics.image_failed(result.error_code, for_good=False)
    ctx.dispatcher.submit_job(job_id, countdown=backoff(ctx, 1))
    return ResultOutcome.RETRYING


def retry_or_dead(
    ctx: Context, job_id: str, slot: Slot, task_uuid: str, code: str, message: str
) -> ResultOutcome:
    """An explicit failure of a task: a new attempt under a new taskUUID while the slot has
    attempts left (SLOT_MAX_ATTEMPTS), else the slot is dead and dead-lettered."""
    if slot.attempt < ctx.settings.slot_max_attempts:
        applied = ctx.store.new_attempt(
            job_id,
            slot.slot,
            AWAITING_RESULT,
            slot.attempt + 1,
            task_uuid=task_uuid,
            error_code=code,
            error_message=message,
        )
        admission.release(ctx, [task_uuid])
        if not applied:
            return ResultOutcome.DUPLICATE
        metrics.image_failed(code, for_good=False)
        ctx.dispatcher.submit_job(job_id, countdown=backoff(ctx, slot.attempt))
        return ResultOutcome.RETRYING
    applied = ctx.store.transition_slot(
        job_id,
        slot.slot,
        AWAITING_RESULT,
        SlotState.DEAD,
        task_uuid=task_uuid,
        error_code=code,
        error_message=message,
    )
    admission.release(ctx, [task_uuid])
    if not applied:
        return ResultOutcome.DUPLICATE
    metrics.image_failed(code, for_good=True)
    ctx.store.dead_letter(job_id, slot.slot, code, message)
    log.warning(
        "slot dead-lettered: retry budget spent",
        extra={"job_id": job_id, "slot": slot.slot, "code": code, "attempts": slot.attempt},
    )
    return ResultOutcome.DEAD


def backoff(ctx: Context, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before a new attempt: doubling, capped, at least what the provider asked."""
    base = min(ctx.settings.retry_backoff_cap_seconds, 2**attempt)
    if retry_after is not None:
        base = min(ctx.settings.retry_backoff_cap_seconds, max(base, retry_after))
    return float(base)
