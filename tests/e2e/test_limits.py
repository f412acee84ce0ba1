"""The operator's pause against the running pipeline: jobs are accepted and wait, the worker and
the reconciler send nothing to Runware, and resume has every image made and charged once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline import quotas
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.wiring import build_service
from tests.e2e.conftest import Pipeline, check_stored_job

pytestmark = pytest.mark.e2e

PAUSED = "waiting: submission paused by an operator (e2e maintenance)"


def charged(stack: Pipeline) -> list[str]:
    """The taskUUID of every image the emulator charged for since the test began."""
    ledger = httpx.get(f"{stack.emulator_url}/_emulator/ledger", timeout=10).json()
    return [entry["taskUUID"] for entry in ledger["entries"]]


@pytest.fixture
def operator(stack: Pipeline) -> Iterator[Context]:
    """The pipeline's use cases as the `imagine` command builds them, nudging the stack's
    workers through its broker; submission is on again after the test whatever happens."""
    ctx = build_service(Settings.from_env(stack.env)).context
    yield ctx
    quotas.resume_submissions(ctx)


def test_a_paused_pipeline_accepts_jobs_sends_nothing_and_resume_makes_each_image_once(
    stack: Pipeline, operator: Context, s3_client: Any
) -> None:
    assert quotas.pause_submissions(operator, "e2e maintenance")

    created = stack.submit(
        {"positivePrompt": "held by a pause", "resolution": "1K", "numberResults": 2}
    )

    assert created["state"] == "queued"
    held = stack.wait(created["id"], until=lambda job: job["reason"] == PAUSED)
    # The reconciler's nudge past the grace period meets the pause as well.
    stack.wait(
        created["id"],
        timeout=30,
        until=lambda job: job["updatedAt"] != held["updatedAt"] and job["reason"] == PAUSED,
    )
    assert charged(stack) == [], "nothing reached Runware while paused"
    pause = quotas.submissions_paused(operator)
    assert pause is not None and pause.reason == "e2e maintenance" and pause.held_jobs >= 1

    assert quotas.resume_submissions(operator) >= 1

    job = stack.wait(created["id"], timeout=60)
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    assert job["reason"] is None
    assert sorted(charged(stack)) == sorted(slot["taskUUID"] for slot in job["slots"])
    assert quotas.submissions_paused(operator) is None
