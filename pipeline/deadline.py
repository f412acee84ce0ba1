"""Every job ends by its deadline: received images are stored if they can be, the rest fail."""

from __future__ import annotations

import logging

from pipeline.completion import close_open_slots, finish_job
from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.models import SlotState
from pipeline.promotion import promote_slot

log = logging.getLogger(__name__)


def expire_job(ctx: Context, job_id: str) -> None:
    """At the deadline, unfinished slots fail with reason `deadline` and the job ends."""
    job = ctx.store.get_job(job_id)
    if job is None or job.terminal:
        return
    for slot in job.slots:
        if slot.state == SlotState.RECEIVED:
            # A paid image that arrived in time is kept whenever S3 allows.
            try:
                promote_slot(ctx, job_id, slot.slot, allow_fetch=True)
            except PipelineError as exc:  # S3, the hosted copy, or the image itself
                log.warning(
                    "image not stored by the deadline",
                    extra={"job_id": job_id, "slot": slot.slot, "error": exc.message},
                )
    job = ctx.store.get_job(job_id)
    if job is None or job.terminal:
        return
    close_open_slots(ctx, job, "deadline", "the job's deadline passed")
    finish_job(ctx, job_id)
