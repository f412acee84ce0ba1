"""A job that ended without all its images, raised as an error operators see in Flower."""

from __future__ import annotations

import re

from pipeline.context import Context
from pipeline.models import Job, JobState, SlotState

# The ends that leave requested images unmade; a cancellation is the tenant's choice.
FAILED_ENDS = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.PARTIALLY_SUCCEEDED})
# Error codes are identifiers (ours or the provider's); anything else is not shown.
CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class JobFailed(Exception):
    """A job ended failed, timed out or partially succeeded.

    Raised by the task that announces the job's end (`imagine.notify_job`), after the end is
    recorded, its manifest written and its callback sent or given up, so that Celery records
    that task as FAILURE: Flower counts it among failed tasks and lists it with this message
    (the job id, its state and each unstored image's code; never the prompt or a URL). The
    message is acknowledged all the same (`task_acks_on_failure_or_timeout`) and the error is
    not transient, so the task is neither redelivered nor retried: nothing is sent, charged or
    written after it. A custom event would say the same but Flower shows no custom event."""

    def __init__(self, job_id: str, state: str, slots: list[str]) -> None:
        self.job_id = job_id
        self.state = state
        self.slots = slots
        super().__init__(f"job {job_id} ended {state}: {'; '.join(slots) or 'no images'}")

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str, str, list[str]]]:
        return type(self), (self.job_id, self.state, self.slots)


def failure_of(job: Job) -> JobFailed | None:
    """The job's failure, if it ended in one."""
    if job.state not in FAILED_ENDS:
        return None
    slots = []
    for slot in job.slots:
        if slot.state == SlotState.STORED:
            continue
        code = slot.error_code if slot.error_code and CODE.fullmatch(slot.error_code) else "-"
        slots.append(f"slot {slot.slot} {slot.state} ({code})")
    if not job.slots and job.reason:
        # A request refused before it had images: its reason's code, not its details.
        reason = job.reason.partition(":")[0]
        slots.append(reason if CODE.fullmatch(reason) else "refused")
    return JobFailed(job.id, str(job.state), slots)


def raise_if_failed(ctx: Context, job_id: str) -> None:
    """Raise the job's failure once its end has been announced (see `JobFailed`)."""
    job = ctx.store.get_job(job_id)
    failure = failure_of(job) if job is not None else None
    if failure is not None:
        raise failure
