"""Recovery: the reconciler that finds what no message will (silent slots, stuck jobs, passed
deadlines), and the operator's way back (retry a job, replay dead letters)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline import clock, metrics
from pipeline.completion import finish_job
from pipeline.context import Context
from pipeline.deadline import expire_job
from pipeline.dependencies import address
from pipeline.enqueue import get_job
from pipeline.errors import Conflict, NotFound, ProviderError
from pipeline.intake import record_results
from pipeline.models import Job, ResultOutcome, SlotState
from pipeline.schemas import ProviderResult
from pipeline.submission import submit_job

log = logging.getLogger(__name__)

# Jobs one pass looks at, at most, earliest due first: a pass stays well inside its lock's TTL
# however many come due at once (after an outage, or over jobs written before the due index);
# the next passes take the rest.
DUE_PER_PASS = 1000
# What a polled result did when it was the slot's result (not a replay, not "still working").
POLL_RECORDED = frozenset(
    {
        ResultOutcome.RECEIVED,
        ResultOutcome.DISCARDED,
        ResultOutcome.FAILED,
        ResultOutcome.RETRYING,
        ResultOutcome.DEAD,
    }
)


@dataclass
class ReconcilePass:
    """What one pass did, counted; `skipped` when another pass held the lock."""

    looked: int = 0  # jobs read
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
    """One pass over the jobs that are due, by one process at a time: a second beat, or a pass
    slower than the interval, never runs two at once."""
    ttl = max(30.0, ctx.settings.reconcile_interval_seconds * 6)
    with ctx.store.exclusive("reconcile", ttl) as acquired:
        if not acquired:
            return ReconcilePass(skipped=True)
        return reconcile_pass(ctx)


def reconcile_pass(ctx: Context) -> ReconcilePass:
    """Look at the jobs that are due (`next_look`), not at every active one, so a pass costs
    what is due rather than what is in flight; each is then made due again when it next
    needs a look."""
    now = clock.now()
    circuit = ctx.circuit.state()
    counts = ReconcilePass(probe_due=circuit.open and now >= (circuit.probe_at or 0.0))
    if not circuit.open:
        counts.model_probes_due = {
            paused.model
            for paused in ctx.circuit.open_models()
            if paused.model and now >= (paused.probe_at or 0.0)
        }
    ctx.store.backfill_due()
    marks: dict[str, float] = {}
    for job_id, deadline in jobs_to_look_at(ctx, now, counts):
        due = look(ctx, job_id, deadline, now, counts)
        if due is not None:
            marks[job_id] = due
    ctx.store.mark_due(marks)
    return counts


def jobs_to_look_at(ctx: Context, now: float, counts: ReconcilePass) -> Iterable[tuple[str, float]]:
    """The due jobs, claimed; every active job while a circuit probe is due, because a probe
    takes the first job with a pending image, and a job waiting on an open circuit need not be
    due. A probe taken is scheduled a probe interval later, so while a circuit is open this is
    one pass per interval (every pass while no job has a pending image to probe with)."""
    if counts.probe_due or counts.model_probes_due:
        return ctx.store.active_jobs()
    return ctx.store.claim_due_jobs(now, DUE_PER_PASS)


def look(
    ctx: Context, job_id: str, deadline: float, now: float, counts: ReconcilePass
) -> float | None:
    """Reconcile one job; returns when it next needs a look (None: it has left the active set)."""
    counts.looked += 1
    try:
        job = reconcile_job(ctx, job_id, deadline, now, counts)
    except Exception:
        # One job's failure must not stop the pass for every other job's deadline; the next
        # pass tries this one again.
        counts.errors += 1
        log.exception("reconcile step failed", extra={"job_id": job_id})
        return now
    if job is None or job.terminal:
        return None
    # Still due (a silent task keeps being polled): due again at the next pass, behind the jobs
    # that were due before this one was looked at.
    return max(now, next_look(job, ctx.settings.reconcile_grace_seconds))


def next_look(job: Job, grace: float) -> float:
    """When the reconciler next has something to check on `job` as read: its deadline, or the
    grace period after the time its earliest check counts from (see `reconcile_job`). Only the
    passing of time is covered here: a write makes its job due by itself (`JobStore`)."""
    if all(slot.terminal for slot in job.slots):
        quiet = [last_write(job)]
    else:
        quiet = open_checks_since(job)
    return min([job.deadline_at, *(since + grace for since in quiet)])


def open_checks_since(job: Job) -> list[float]:
    """What each check of an unfinished job counts its grace from: the job's last update while
    an image is pending (re-drive), each silent task's submission (poll), each unstored image's
    receipt (promote)."""
    since = []
    if any(slot.state == SlotState.PENDING for slot in job.slots):
        since.append(job.updated_at)
    for slot in job.slots:
        if slot.state == SlotState.SUBMITTED and slot.task_uuid and slot.submitted_at is not None:
            since.append(slot.submitted_at)
        elif slot.state == SlotState.RECEIVED and slot.received_at is not None:
            since.append(slot.received_at)
    return since


def last_write(job: Job) -> float:
    """The latest update of the job or of any of its slots."""
    return max([job.updated_at, *(slot.updated_at or 0.0 for slot in job.slots)])


def reconcile_job(
    ctx: Context, job_id: str, deadline: float, now: float, counts: ReconcilePass
) -> Job | None:
    """Act on one job as it reads now; returns it as read (None: it has no record)."""
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
    return job


def finish_orphan(ctx: Context, job: Job, now: float, counts: ReconcilePass) -> None:
    """Every slot has ended but the job has not: the process that moved the last slot died
    before finishing it. Nothing else would end the job before its deadline."""
    if now - last_write(job) > ctx.settings.reconcile_grace_seconds and finish_job(ctx, job.id):
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
        if outcome.outcome in POLL_RECORDED:
            log.warning(
                "result arrived by polling, not by webhook",
                extra={
                    "job_id": outcome.job_id,
                    "slot": outcome.slot,
                    "task_uuid": task_uuid,
                    "webhook_host": address(ctx.settings.public_base_url),
                },
            )
            metrics.result_polled()
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
