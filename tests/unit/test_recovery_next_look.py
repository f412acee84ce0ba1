"""When the reconciler next needs to look at a job, worked out from the job as it was read."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.models import Job, JobState, Slot, SlotState
from pipeline.recovery import next_look

pytestmark = pytest.mark.unit

GRACE = 60.0
CREATED = 1_700_000_000.0
DEADLINE = CREATED + 900


def job(*slots: Slot, updated_at: float = CREATED, deadline_at: float = DEADLINE) -> Job:
    return Job(
        id="job",
        tenant="acme",
        state=JobState.RUNNING,
        model="xai:grok-imagine@image-pro",
        params={},
        slot_count=len(slots),
        output_format="JPG",
        created_at=CREATED,
        updated_at=updated_at,
        deadline_at=deadline_at,
        slots=list(slots),
    )


def slot(number: int, state: SlotState, **fields: Any) -> Slot:
    return Slot(job_id="job", slot=number, state=state, **fields)


def submitted(number: int, at: float) -> Slot:
    return slot(number, SlotState.SUBMITTED, task_uuid=f"task-{number}", submitted_at=at)


def test_a_silent_task_is_polled_a_grace_period_after_its_submission() -> None:
    read = job(submitted(0, CREATED + 10), submitted(1, CREATED + 5), updated_at=CREATED + 10)

    assert next_look(read, GRACE) == CREATED + 5 + GRACE


def test_an_unstored_image_is_promoted_a_grace_period_after_its_receipt() -> None:
    read = job(
        submitted(0, CREATED + 30),
        slot(1, SlotState.RECEIVED, received_at=CREATED + 20, updated_at=CREATED + 20),
        updated_at=CREATED + 30,
    )

    assert next_look(read, GRACE) == CREATED + 20 + GRACE


def test_pending_images_count_from_the_jobs_last_update() -> None:
    read = job(slot(0, SlotState.PENDING, updated_at=CREATED), updated_at=CREATED + 40)

    assert next_look(read, GRACE) == CREATED + 40 + GRACE


def test_the_deadline_comes_first_when_it_is_sooner() -> None:
    read = job(submitted(0, CREATED), deadline_at=CREATED + 30)

    assert next_look(read, GRACE) == CREATED + 30


def test_a_job_whose_images_all_ended_is_finished_a_grace_period_after_its_last_write() -> None:
    read = job(
        slot(0, SlotState.STORED, updated_at=CREATED + 50),
        slot(1, SlotState.FAILED, updated_at=CREATED + 70),
        updated_at=CREATED + 60,
    )

    assert next_look(read, GRACE) == CREATED + 70 + GRACE


def test_ended_images_of_an_unfinished_job_set_no_time() -> None:
    read = job(
        slot(0, SlotState.STORED, updated_at=CREATED + 5),
        submitted(1, CREATED + 50),
        updated_at=CREATED + 50,
    )

    assert next_look(read, GRACE) == CREATED + 50 + GRACE


def test_a_submitted_image_without_a_task_is_not_polled_so_sets_no_time() -> None:
    read = job(slot(0, SlotState.SUBMITTED, submitted_at=CREATED), updated_at=CREATED)

    assert next_look(read, GRACE) == DEADLINE
