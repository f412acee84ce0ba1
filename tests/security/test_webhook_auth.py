"""Webhook authentication and replay: a bad token or a replayed URL changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.signing import webhook_token
from tests.security.conftest import (
    OLD_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    Harness,
    assert_error,
    success_body,
)

pytestmark = pytest.mark.security

OTHER_TASK = "0b7f4a52-0d3c-4f4e-9d5b-2f0e9e3c1a11"

BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "empty": lambda task: "",
    "another task's": lambda task: webhook_token(WEBHOOK_SECRET, OTHER_TASK),
    "an unknown secret's": lambda task: webhook_token("not-the-secret-of-this-server", task),
    "truncated": lambda task: webhook_token(WEBHOOK_SECRET, task)[:-1],
    "padded": lambda task: webhook_token(WEBHOOK_SECRET, task) + "=",
    "upper-cased": lambda task: webhook_token(WEBHOOK_SECRET, task).upper(),
    "non-ASCII": lambda task: "é" * 43,
    "very long": lambda task: "A" * 10_000,
    "the secret itself": lambda task: WEBHOOK_SECRET,
    "the taskUUID": lambda task: task,
}


@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_bad_token_is_refused_before_anything_is_read(
    harness: Harness, make_token: Callable[[str], str]
) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    answer = harness.webhook(task, success_body(task), token=make_token(task))
    assert_error(answer, 401, "unauthorized")
    harness.assert_unchanged(before)


def test_a_missing_token_is_refused(harness: Harness) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    answer = harness.client.post(f"/webhooks/runware/{task}", json=success_body(task))
    assert_error(answer, 401, "unauthorized")
    harness.assert_unchanged(before)


def test_a_token_in_a_header_instead_of_the_url_is_refused(harness: Harness) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    answer = harness.client.post(
        f"/webhooks/runware/{task}",
        json=success_body(task),
        headers={"Authorization": f"Bearer {webhook_token(WEBHOOK_SECRET, task)}"},
    )
    assert_error(answer, 401, "unauthorized")
    harness.assert_unchanged(before)


def test_a_token_under_the_previous_secret_is_still_accepted(harness: Harness) -> None:
    """Rotation: the control case that the refusals above are about the token alone."""
    job_id, task = harness.submitted_job()
    answer = harness.webhook(
        task, success_body(task), token=webhook_token(OLD_WEBHOOK_SECRET, task)
    )
    assert answer.status_code == 200 and answer.json == {"taskUUID": task, "results": ["received"]}
    slot = harness.store.get_slot(job_id, 0)
    assert slot is not None and slot.state == "received"


def test_a_valid_token_for_a_task_the_pipeline_never_made_is_404(harness: Harness) -> None:
    harness.submitted_job()
    task = str(uuid.uuid4())
    before = harness.snapshot()
    assert_error(harness.webhook(task, success_body(task)), 404, "not_found")
    harness.assert_unchanged(before)


@pytest.mark.parametrize(
    "task",
    [
        "abc",
        "x:slot:0",
        "1607528b-b740-4975-8cc1-6dc6b2d18f60:slot:0",
        "1607528B-B740-4975-8CC1-6DC6B2D18F60",
        "1607528bb7404975 8cc16dc6b2d18f60",
        "{1607528b-b740-4975-8cc1-6dc6b2d18f60}",
        "*",
        "..%2f..%2fjob",
    ],
)
def test_a_task_path_that_is_not_a_uuid_never_reaches_the_store(
    harness: Harness, task: str
) -> None:
    harness.submitted_job()
    before = harness.snapshot()
    answer = harness.webhook(
        task,
        {"data": [{"taskUUID": task, "imageUUID": "i"}]},
        token=webhook_token(WEBHOOK_SECRET, task),
    )
    assert_error(answer, 404)
    harness.assert_unchanged(before)


def test_a_body_naming_another_task_than_the_url_is_refused(harness: Harness) -> None:
    _job, task = harness.submitted_job()
    _other_job, other = harness.submitted_job()
    before = harness.snapshot()
    body = assert_error(harness.webhook(task, success_body(other)), 422, "validation_failed")
    assert body["errors"] == {"taskUUID": [other]}
    harness.assert_unchanged(before)


REPLAYS: dict[str, Callable[[str], Any]] = {
    "success again": lambda task: success_body(task, imageUUID="replayed-image"),
    "account error (credits)": lambda task: {
        "errors": [{"taskUUID": task, "code": "insufficientCredits", "message": "ATTACKER TEXT"}]
    },
    "account error (api key)": lambda task: {
        "errors": [{"taskUUID": task, "code": "invalidApiKey", "message": "ATTACKER TEXT"}]
    },
    "model gone": lambda task: {
        "errors": [{"taskUUID": task, "code": "unknownModel", "message": "ATTACKER TEXT"}]
    },
    "transient error": lambda task: {
        "errors": [{"taskUUID": task, "code": "timeoutProvider", "message": "ATTACKER TEXT"}]
    },
    "permanent error": lambda task: {
        "errors": [{"taskUUID": task, "code": "providerContentPolicyViolation", "message": "x"}]
    },
    "nested error item": lambda task: {
        "data": [
            {
                "taskUUID": task,
                "status": "error",
                "error": {"code": "insufficientCredits", "message": "ATTACKER TEXT"},
            }
        ]
    },
    "untied error": lambda task: {
        "errors": [{"code": "insufficientCredits", "message": "ATTACKER TEXT"}]
    },
}


@pytest.mark.parametrize("ended", ["succeeded", "failed", "cancelled"])
@pytest.mark.parametrize("make_body", REPLAYS.values(), ids=REPLAYS.keys())
def test_a_replayed_webhook_url_changes_nothing_once_the_job_has_ended(
    harness: Harness, ended: str, make_body: Callable[[str], Any]
) -> None:
    if ended == "succeeded":
        _job, task = harness.succeeded_job()
    elif ended == "failed":
        _job, task = harness.failed_job()
    else:
        job_id, task = harness.submitted_job()
        harness.service.cancel_job(job_id, "acme")
        # The provider's own late result is recorded once (DESIGN: discarded, never promoted);
        # from then on the slot has ended like any other.
        late = harness.webhook(task, success_body(task))
        assert late.status_code == 200 and late.json["results"] == ["discarded"]
    waiting, _ = harness.service.create_job(
        {"positivePrompt": "b", "width": 1024, "height": 1024}, "globex"
    )
    before = harness.snapshot()
    answer = harness.webhook(task, make_body(task))
    assert answer.status_code == 200, answer.json
    assert set(answer.json["results"]) <= {"duplicate", "discarded"}
    harness.assert_unchanged(before)
    assert harness.circuit() == {}
    assert harness.service.submit_job(waiting.id) == "submitted"  # nothing paused submission
