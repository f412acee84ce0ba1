"""Recovery: the reconciler that finds what no message will (silent slots, stuck jobs, passed
deadlines), and the operator's way back (retry a job, replay dead letters)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline import clock
from pipeline.completion import finish_job
from pipeline.context import Context
from pipeline.deadline import expire_job
from pipeline.enqueue import get_job
from pipeline.errors import Conflict, NotFound, ProviderError
from pipeline.intake import record_results
from pipeline.models import Job, ResultOutcome, SlotState
from pipeline.schemas import ProviderResult
from pipeline.submission import submit_job

log = logging.getLogger(__name__)


@dataclass
class ReconcilePass:
    """What one pass did, counted; `skipped` when another pass held the lock."""

    expired: int = 0
    redriven: int = 0
    polled: int = 0
    promoted: int = 0
    finished: int = 0
    probed: int = 0
    errors: int = 0
    skipped: bool = False
    probe_due: bool = field(default=False, repr=False)
    # Paused models whose probe is due (probed only while the account circuit is closed).
    model_probes_due: set[str] = field(default_factory=set, repr=False)


def reconcile(ctx: Context) -> ReconcilePass:
    """One pass over active jobs, by one process at a time: a second beat, or a pass slower
    than the interval, never runs two at once."""
    ttl = max(30.0, ctx.settings.reconcile_interval_seconds * 6)
    with ctx.store.exclusive("reconcile", ttl) as acquired:
        if not acquired:
            return ReconcilePass(skipped=True)
        return reconcile_pass(ctx)


def reconcile_pass(ctx: Context) -> ReconcilePass:
    now = clock.now()
    circuit = ctx.circuit.state()
    counts = ReconcilePass(probe_due=circuit.open and now >= (circuit.probe_at or 0.0))
    if not circuit.open:
        counts.model_probes_due = {
            paused.model
            for paused in ctx.circuit.open_models()
            if paused.model and now >= (paused.probe_at or 0.0)
        }
    for job_id, deadline in ctx.store.active_jobs():
        try:
            reconcile_job(ctx, job_id, deadline, now, counts)
        except Exception:
            # One job's failure must not stop the pass for every other job's deadline.
            counts.errors += 1
            log.exception("reconcile step failed", extra={"job_id": job_id})
    return counts


def reconcile_job(
    ctx: Context, job_id: str, deadline: float, now: float, counts: ReconcilePass
) -> None:
    job = ctx.store.get_job(job_id)
    if job is None:
        ctx.store.forget_job(job_id)
    elif job.terminal:
        ctx.store.retire_job(job_id)
    elif now >= deadline:
        expire_job(ctx, job_id)
        counts.expired += 1
    elif all(slot.terminal for slot in job.slots):
        finish_orphan(ctx, job, now, counts)
    else:
        redrive(ctx, job, now, counts)
        check_slots(ctx, job, now, counts)


def finish_orphan(ctx: Context, job: Job, now: float, counts: ReconcilePass) -> None:
    """Every slot has ended but the job has not: the process that moved the last slot died
    before finishing it. Nothing else would end the job before its deadline."""
    last = max((slot.updated_at or 0.0 for slot in job.slots), default=0.0)
    if now - max(last, job.updated_at) > ctx.settings.reconcile_grace_seconds and finish_job(
        ctx, job.id
    ):
        counts.finished += 1


def redrive(ctx: Context, job: Job, now: float, counts: ReconcilePass) -> None:
    """Pending images: one job probes the provider while the account circuit is open, and one
    job of each paused model probes that model (success closes it); otherwise a job quiet past
    the grace period gets a new nudge."""
    if not any(slot.state == SlotState.PENDING for slot in job.slots):
        return
    if counts.probe_due:
        counts.probe_due = False
        probe(ctx, job, now, None, counts)
    elif job.model in counts.model_probes_due:
        counts.model_probes_due.discard(job.model)
        probe(ctx, job, now, job.model, counts)
    elif now - job.updated_at > ctx.settings.reconcile_grace_seconds:
        ctx.dispatcher.submit_job(job.id)
        counts.redriven += 1


def probe(ctx: Context, job: Job, now: float, model: str | None, counts: ReconcilePass) -> None:
    """Submit one job past an open circuit (the account's, or `model`'s)."""
    ctx.circuit.schedule_probe(now + ctx.settings.circuit_probe_seconds, model)
    counts.probed += 1
    try:
        submit_job(ctx, job.id, probe=True)
    except ProviderError as exc:
        log.warning("circuit probe failed", extra={"code": exc.provider_code, "model": model})


def check_slots(ctx: Context, job: Job, now: float, counts: ReconcilePass) -> None:
    """Silent submitted images are polled; received ones not stored yet are promoted."""
    grace = ctx.settings.reconcile_grace_seconds
    for slot in job.slots:
        if (
            slot.state == SlotState.SUBMITTED
            and slot.task_uuid
            and (now - (slot.submitted_at or now) > grace)
        ):
            poll(ctx, slot.task_uuid)
            counts.polled += 1
        elif slot.state == SlotState.RECEIVED and now - (slot.received_at or now) > grace:
            ctx.dispatcher.finalize_slot(job.id, slot.slot)
            counts.promoted += 1


def poll(ctx: Context, task_uuid: str) -> None:
    """Ask `getResponse` for a task whose webhook never came; record what it says."""
    try:
        results = ctx.runware().get_response(task_uuid)
    except ProviderError as exc:
        if exc.kind != ProviderError.NOT_FOUND:
            log.warning(
                "getResponse failed", extra={"task_uuid": task_uuid, "code": exc.provider_code}
            )
            return
        # Not found: recorded like any result, so the task is sent again under its taskUUID.
        results = [
            ProviderResult(
                task_uuid=task_uuid,
                status="error",
                error_code=exc.provider_code or "taskFailedOrNotFound",
                error_message="getResponse does not find the task",
            )
        ]
    finished = [result for result in results if result.status != "processing"]
    if not finished:
        return
    for outcome in record_results(ctx, task_uuid, finished[:1]):
        if outcome.outcome == ResultOutcome.RECEIVED:
            ctx.dispatcher.finalize_slot(outcome.job_id, outcome.slot)


def retry_job(ctx: Context, job_id: str, slots: list[int] | None = None) -> Job:
    """Reopen failed or dead slots as new attempts: the one recorded way back for a job.

    The job returns to `running`, its deadline restarts, and when it ends again the manifest
    is rewritten with a higher version.
    """
    job = get_job(ctx, job_id)
    wanted = [
        slot
        for slot in job.slots
        if slot.state in {SlotState.FAILED, SlotState.DEAD}
        and (slots is None or slot.slot in slots)
    ]
    if not wanted:
        raise Conflict(f"job {job_id} has no failed or dead slot to retry")
    now = clock.now()
    deadline = now + max(
        ctx.settings.default_deadline_seconds, int(job.deadline_at - job.created_at)
    )
    ctx.store.reopen_job(job_id, deadline, job.manifest_version + 1)
    for slot in wanted:
        ctx.store.new_attempt(
            job_id,
            slot.slot,
            [SlotState.FAILED, SlotState.DEAD],
            slot.attempt + 1,
            error_code=None,
            error_message=None,
            reopened_at=repr(now),
        )
        ctx.store.remove_dead_letter(job_id, slot.slot)
    log.warning(
        "job reopened by an operator",
        extra={"job_id": job_id, "slots": [slot.slot for slot in wanted]},
    )
    ctx.dispatcher.submit_job(job_id)
    return get_job(ctx, job_id)


def replay_dead_letters(ctx: Context, limit: int = 100) -> list[str]:
    """Re-drive dead-lettered slots, one `retry_job` per job."""
    by_job: dict[str, list[int]] = {}
    for entry in ctx.store.dead_letters(limit):
        by_job.setdefault(entry.job_id, []).append(entry.slot)
    replayed = []
    for job_id, slots in by_job.items():
        try:
            retry_job(ctx, job_id, slots)
            replayed.append(job_id)
        except (NotFound, Conflict):
            for slot in slots:
                ctx.store.remove_dead_letter(job_id, slot)
    return replayed
