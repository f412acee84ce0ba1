"""The pipeline against provider behaviour seen in the field, each run checked against the ledger.

Not-found polls for live tasks, conflicts that name no task, item codes nobody knows and a disabled
model: after each, every image the emulator charged for is stored, and none is charged twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.models import JOB_TERMINAL
from tests.e2e.conftest import Pipeline, check_stored_job, metric

pytestmark = pytest.mark.e2e

MODEL = "xai:grok-imagine@image-pro"
SLOT_MAX_ATTEMPTS = 3  # the pipeline's default


def control(stack: Pipeline, path: str, **params: str) -> Any:
    response = httpx.get(f"{stack.emulator_url}/_emulator/{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def queue_fault(stack: Pipeline, **fault: Any) -> None:
    response = httpx.post(f"{stack.emulator_url}/_emulator/faults/queue", json=fault, timeout=10)
    response.raise_for_status()


def eventually(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.2)


def charged_tasks(stack: Pipeline) -> dict[str, int]:
    """How many images the emulator charged, by taskUUID."""
    by_task = control(stack, "ledger")["totals"]["byTask"]
    return {task_uuid: row["count"] for task_uuid, row in by_task.items()}


def check_ledger(stack: Pipeline, *jobs: dict[str, Any]) -> None:
    """Every charged image is a stored slot's, charged once; no paid image was thrown away."""
    stored = {
        slot["taskUUID"]: slot for job in jobs for slot in job["slots"] if slot["state"] == "stored"
    }
    assert charged_tasks(stack) == dict.fromkeys(stored, 1)


def no_lease_held(stack: Pipeline) -> None:
    eventually(lambda: metric(stack, "imagine_runware_in_flight") == 0, timeout=30)


def test_not_found_poll_for_a_live_task_starts_no_second_paid_task(
    stack: Pipeline, s3_client: Any
) -> None:
    # The webhook never comes and every poll says "not found" for a task that exists.
    stack.emulator(drop_webhook_rate=1.0, not_found_for_live_task=1.0)
    created = stack.submit({"positivePrompt": "found after all", "resolution": "1K"})
    eventually(lambda: control(stack, "stats")["polls_not_found"] >= 2)
    # Resubmitted under its taskUUID at least once: the provider answered conflictTaskUUID.
    eventually(lambda: control(stack, "stats")["tasks_rejected"] >= 1)
    running = stack.wait(created["id"], timeout=5, until=lambda j: True)
    assert running["state"] not in JOB_TERMINAL
    stack.emulator(not_found_for_live_task=0.0)  # the task shows up in getResponse again
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    (slot,) = job["slots"]
    assert slot["attempt"] == 1
    assert [t["taskUUID"] for t in control(stack, "tasks")["tasks"]] == [slot["taskUUID"]]
    check_ledger(stack, job)
    no_lease_held(stack)


def test_conflict_without_task_uuid_leaves_no_slot_pending_nor_lease_held(
    stack: Pipeline, s3_client: Any
) -> None:
    # Each resubmit after a not-found is answered by a conflict that names no task.
    stack.emulator(
        drop_webhook_rate=1.0, not_found_for_live_task=1.0, conflict_without_task_uuid=True
    )
    created = stack.submit(
        {"positivePrompt": "conflicts name nobody", "resolution": "1K", "numberResults": 2}
    )
    eventually(lambda: control(stack, "stats")["tasks_rejected"] >= 2)
    running = stack.wait(created["id"], timeout=5, until=lambda j: True)
    assert all(slot["state"] != "pending" for slot in running["slots"]), running
    stack.emulator(not_found_for_live_task=0.0)
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    assert [slot["attempt"] for slot in job["slots"]] == [1, 1]
    assert len(control(stack, "tasks")["tasks"]) == 2
    check_ledger(stack, job)
    no_lease_held(stack)


def test_unknown_item_code_gets_a_new_attempt(stack: Pipeline, s3_client: Any) -> None:
    queue_fault(stack, kind="item_error", code="weirdNewFailure", count=1)
    created = stack.submit({"positivePrompt": "odd failure once", "resolution": "1K"})
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    (slot,) = job["slots"]
    assert slot["attempt"] == 2
    assert len(control(stack, "tasks")["tasks"]) == 2
    check_ledger(stack, job)
    no_lease_held(stack)


def test_unknown_item_codes_end_dead_within_the_attempt_budget(stack: Pipeline) -> None:
    stack.emulator(unknown_item_code=1.0)
    created = stack.submit({"positivePrompt": "odd failure always", "resolution": "1K"})
    job = stack.wait(created["id"])
    assert job["state"] == "failed"
    (slot,) = job["slots"]
    assert slot["state"] == "dead"
    assert slot["attempt"] == SLOT_MAX_ATTEMPTS
    assert slot["error"]["code"] == "weirdNewFailure"
    # One task per attempt, never more; failed items are not charged.
    assert len(control(stack, "tasks")["tasks"]) == SLOT_MAX_ATTEMPTS
    assert charged_tasks(stack) == {}
    no_lease_held(stack)


def test_model_disabled_pauses_that_model_and_resumes(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(model_disabled=True)
    first = stack.submit({"positivePrompt": "disabled one", "resolution": "1K"})
    second = stack.submit({"positivePrompt": "disabled two", "resolution": "1K"})
    for created in (first, second):
        waiting = stack.wait(
            created["id"], until=lambda j: (j["reason"] or "").startswith("waiting")
        )
        assert MODEL in waiting["reason"] and "modelDisabled" in waiting["reason"]
        assert waiting["state"] in {"queued", "running"}
    # The model's pause is not the account's.
    assert metric(stack, "imagine_circuit_open") == 0
    assert charged_tasks(stack) == {}
    stack.emulator(model_disabled=False)  # the model comes back; a probe resumes submission
    jobs = [stack.wait(created["id"]) for created in (first, second)]
    for job in jobs:
        check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
        assert job["reason"] in (None, "")
    check_ledger(stack, *jobs)
    no_lease_held(stack)
