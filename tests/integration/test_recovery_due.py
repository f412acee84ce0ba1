"""The reconciler reads only the jobs that are due, and still does everything it did for each.

The harness's clock (`uc.clock`) moves the use cases' time; the store stamps its writes with
the real time, so a write seen from a clock moved forward made its job due in the past.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.models import Job
from tests.integration.conftest import UseCases, error_item, image_item, jpeg_bytes

pytestmark = pytest.mark.integration

GRACE = 60  # RECONCILE_GRACE_SECONDS of the harness


def count_reads(uc: UseCases, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the jobs read from now on, in order."""
    reads: list[str] = []
    original = uc.store.get_job

    def get_job(job_id: str) -> Job | None:
        reads.append(job_id)
        return original(job_id)

    monkeypatch.setattr(uc.store, "get_job", get_job)
    return reads


def job_state(uc: UseCases, job_id: str) -> str:
    job = uc.store.get_job(job_id)
    assert job is not None
    return str(job.state)


def test_a_pass_reads_no_job_before_it_is_due(
    use_cases: UseCases, monkeypatch: pytest.MonkeyPatch
) -> None:
    uc = use_cases
    jobs = dict(uc.submitted() for _ in range(3))
    reads = count_reads(uc, monkeypatch)

    passed = uc.service.reconcile()

    assert (passed.looked, reads) == (0, [])
    assert uc.runware.polls() == []

    uc.clock.advance(GRACE + 1)
    passed = uc.service.reconcile()

    assert passed.looked == 3 and set(reads) == set(jobs)
    assert sorted(uc.runware.polls()) == sorted(task for tasks in jobs.values() for task in tasks)


def test_a_job_is_read_again_when_its_next_check_is_due_not_at_every_pass(
    use_cases: UseCases, monkeypatch: pytest.MonkeyPatch
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.clock.advance(GRACE + 1)
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})  # its finalize message is lost
    nudged = len(uc.dispatcher.sent)
    reads = count_reads(uc, monkeypatch)

    assert uc.service.reconcile().looked == 1, "the webhook's write made the job due"
    assert uc.dispatcher.sent[nudged:] == [], "the image is inside its grace period"
    assert uc.service.reconcile().looked == 0
    assert reads == [job_id]

    uc.clock.advance(GRACE + 1)
    passed = uc.service.reconcile()

    assert (passed.looked, passed.promoted) == (1, 1)
    assert uc.dispatcher.sent[nudged:] == [("finalize", (job_id, 0))]


def test_a_task_sent_after_the_jobs_last_look_is_polled_after_its_grace_period(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id = uc.create()  # its submit message is lost
    uc.clock.advance(GRACE + 1)
    assert uc.service.reconcile().redriven == 1
    assert uc.service.submit_job(job_id) == "submitted"
    [task_uuid] = uc.task_uuids(job_id)

    assert uc.service.reconcile().looked == 1, "the submit's writes made the job due"
    assert uc.service.reconcile().looked == 0, "next due when the task's grace period ends"
    assert uc.runware.polls() == []

    uc.clock.advance(GRACE + 1)
    assert uc.service.reconcile().polled == 1

    assert uc.runware.polls() == [task_uuid]


def test_a_job_is_expired_at_a_deadline_sooner_than_the_grace_period(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, _ = uc.submitted(deadlineSeconds=30)
    assert uc.service.reconcile().looked == 0

    uc.clock.advance(31)
    passed = uc.service.reconcile()

    assert passed.expired == 1
    assert job_state(uc, job_id) == "timed_out"


def test_a_job_looked_at_before_its_deadline_is_expired_at_it(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted(deadlineSeconds=90)
    uc.upload(task_uuid, jpeg_bytes())
    uc.clock.advance(GRACE + 1)
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})  # its finalize message is lost
    assert uc.service.reconcile().looked == 1
    assert uc.service.reconcile().looked == 0

    uc.clock.advance(30)  # past the deadline, before the image's grace period ends
    passed = uc.service.reconcile()

    assert passed.expired == 1
    assert job_state(uc, job_id) == "succeeded", "the image received in time is stored"


def test_a_write_while_the_pass_looks_at_a_job_is_not_lost(
    use_cases: UseCases, monkeypatch: pytest.MonkeyPatch
) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.clock.advance(GRACE + 1)
    uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})
    original = uc.store.get_job

    def read_then_fail_the_slot(read_id: str) -> Any:
        job = original(read_id)
        # While the pass holds a copy with the image received, a worker fails it and dies
        # before ending the job: the pass's copy says "look again in a grace period", the
        # write says sooner.
        monkeypatch.setattr(uc.store, "get_job", original)
        assert uc.store.transition_slot(
            job_id, 0, ["received"], "failed", error_code="image_rejected", error_message="bad"
        )
        return job

    monkeypatch.setattr(uc.store, "get_job", read_then_fail_the_slot)
    assert uc.service.reconcile().looked == 1
    assert job_state(uc, job_id) == "running"

    passed = uc.service.reconcile()

    assert (passed.looked, passed.finished) == (1, 1)
    assert job_state(uc, job_id) == "failed"


def test_a_job_written_before_the_due_index_is_still_reconciled(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.store.redis.zrem(uc.store.due_key, job_id)
    uc.clock.advance(GRACE + 1)

    passed = uc.service.reconcile()

    assert (passed.looked, passed.polled) == (1, 1)
    assert uc.runware.polls() == [task_uuid]
    assert uc.store.redis.zscore(uc.store.due_key, job_id) is not None


def test_a_job_whose_read_failed_is_read_again_by_the_next_pass(
    use_cases: UseCases, monkeypatch: pytest.MonkeyPatch
) -> None:
    uc = use_cases
    uc.submitted()
    uc.clock.advance(GRACE + 1)
    original = uc.store.get_job

    def fail_once(read_id: str) -> Any:
        monkeypatch.setattr(uc.store, "get_job", original)
        raise ConnectionError("Redis went away mid-pass")

    monkeypatch.setattr(uc.store, "get_job", fail_once)
    assert uc.service.reconcile().errors == 1

    passed = uc.service.reconcile()

    assert (passed.looked, passed.polled, passed.errors) == (1, 1, 0)


@pytest.mark.parametrize("use_case_settings", [{"CIRCUIT_PROBE_SECONDS": "10"}], indirect=True)
def test_a_due_probe_finds_a_pending_job_that_is_not_due(use_cases: UseCases) -> None:
    uc = use_cases
    model = "xai:grok-imagine@image-pro"
    job_id, [first] = uc.submitted()
    assert uc.webhook(first, {"errors": [error_item(first, "modelDisabled", "disabled")]}) == [
        "retrying"
    ]
    circuit = uc.service.context.circuit
    assert circuit.state(model).open

    uc.clock.advance(11)  # the probe is due; the job's writes are inside their grace period
    passed = uc.service.reconcile()

    assert passed.probed == 1
    assert not circuit.state(model).open
    assert job_state(uc, job_id) == "running"
