"""The holes found by attacking the local stack, each kept closed."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from standardwebhooks import Webhook

from pipeline.callback_log import callback_attempts
from pipeline.errors import RequestInvalid
from pipeline.secrets import Secret
from pipeline.services import JobService
from tests.security.conftest import CALLBACK_SECRET, Harness, assert_error, success_body

pytestmark = pytest.mark.security

JOB = {"positivePrompt": "a lighthouse at dawn", "width": 1024, "height": 1024}


def test_a_live_slots_account_error_pauses_submission_without_repeating_provider_text(
    harness: Harness,
) -> None:
    """A live failure may open the circuit; what other tenants see names the code only."""
    _job, task = harness.submitted_job("acme")
    waiting, _ = harness.service.create_job(JOB, "globex")
    answer = harness.webhook(
        task,
        {
            "errors": [
                {"taskUUID": task, "code": "insufficientCredits", "message": "ATTACKER TEXT <b>"}
            ]
        },
    )
    assert answer.status_code == 200
    assert harness.circuit()["state"] == "open"
    assert harness.service.submit_job(waiting.id) == "paused"
    job = harness.store.get_job(waiting.id)
    assert job is not None and job.reason is not None
    assert "insufficientCredits" in job.reason and "ATTACKER" not in job.reason


def test_a_provider_code_that_is_not_an_identifier_is_not_repeated(harness: Harness) -> None:
    _job, task = harness.submitted_job("acme")
    waiting, _ = harness.service.create_job(JOB, "globex")
    harness.webhook(
        task,
        {
            "data": [
                {
                    "taskUUID": task,
                    "status": "error",
                    "error": {"code": "Credits <script>alert(1)</script>", "message": "x"},
                }
            ]
        },
    )
    harness.service.submit_job(waiting.id)
    job = harness.store.get_job(waiting.id)
    assert job is not None and "<script>" not in (job.reason or "")


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Let the use cases see a clock `seconds` ahead (deadlines pass without waiting)."""
    real = time.time
    monkeypatch.setattr("pipeline.clock.now", lambda: real() + seconds)


def test_a_malformed_image_url_does_not_stop_the_reconciler(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_job, bad_task = harness.submitted_job(deadlineSeconds=40)
    harness.webhook(bad_task, success_body(bad_task, imageURL="http://127.0.0.1:99999/x.jpg"))
    silent_job, _task = harness.submitted_job(deadlineSeconds=40)
    _later(monkeypatch, 120)
    counts = harness.service.reconcile()
    assert (counts.expired, counts.errors) == (2, 0)
    states = {job_id: harness.store.job_state(job_id) for job_id in (bad_job, silent_job)}
    assert states == {bad_job: "failed", silent_job: "timed_out"}
    bad_slot = harness.store.get_slot(bad_job, 0)
    assert bad_slot is not None and bad_slot.error_code == "image_rejected"


def test_one_unreadable_job_does_not_stop_the_reconciler_for_the_others(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, _ = harness.submitted_job(deadlineSeconds=40)
    silent, _ = harness.submitted_job(deadlineSeconds=40)
    original = harness.store.get_job

    def get_job(job_id: str) -> Any:
        if job_id == broken:
            raise ValueError("a record this version cannot read")
        return original(job_id)

    monkeypatch.setattr(harness.store, "get_job", get_job)
    _later(monkeypatch, 120)
    counts = harness.service.reconcile()
    assert (counts.errors, counts.expired) == (1, 1)
    assert harness.store.job_state(silent) == "timed_out"


def _service_without_callback_secret(harness: Harness) -> JobService:
    settings = replace(
        harness.settings,
        callback_secret=type(harness.settings.callback_secret)(),
        callback_tenant_secrets=(),
    )
    return JobService(replace(harness.service.context, settings=settings))


def test_a_callback_is_refused_at_enqueue_when_it_could_not_be_signed(harness: Harness) -> None:
    service = _service_without_callback_secret(harness)
    before = harness.snapshot()
    with pytest.raises(Exception) as caught:
        service.create_job({**JOB, "callbackURL": "https://93.184.216.34/cb"}, "acme")
    assert getattr(caught.value, "errors", {}).keys() == {"callbackURL"}
    harness.assert_unchanged(before)


def test_a_callback_is_never_sent_unsigned(harness: Harness) -> None:
    job, _ = harness.service.create_job({**JOB, "callbackURL": "https://93.184.216.34/cb"}, "acme")
    harness.service.cancel_job(job.id, "acme")
    sent = len(harness.outbound.requests)
    assert _service_without_callback_secret(harness).send_callback(job.id) == "refused:unsigned"
    assert len(harness.outbound.requests) == sent
    assert harness.service.send_callback(job.id) == "sent"
    request = harness.outbound.requests[-1]
    event = Webhook(CALLBACK_SECRET).verify(request.content, dict(request.headers))
    assert (event["type"], event["data"]["id"]) == ("job.ended", job.id)
    assert (request.url.host, request.headers["host"]) == ("93.184.216.34", "93.184.216.34")
    attempts = callback_attempts(harness.service.context, job.id)
    # The refusal sent nothing, so it is no attempt; the signed one is.
    assert [(a["outcome"], a["status"]) for a in attempts] == [("sent", 200)]
    assert attempts[0]["webhookId"] == request.headers["webhook-id"]
    # Kept as long as the job is, and never a secret or a signature.
    key = f"imagine:job:{job.id}:callbacks"
    assert 0 < harness.redis.ttl(key) <= harness.settings.job_retention_seconds
    assert request.headers["webhook-signature"].split(",")[1] not in str(attempts)


def test_the_api_refuses_a_callback_it_could_not_sign_with_one_error_shape(
    harness: Harness,
) -> None:
    harness.client.application.extensions["imagine"]["service"] = _service_without_callback_secret(
        harness
    )
    before = harness.snapshot()
    answer = harness.api("POST", "/v1/jobs", json={**JOB, "callbackURL": "https://93.184.216.34/"})
    body = assert_error(answer, 422, "validation_failed")
    assert "CALLBACK_SECRET" in body["errors"]["callbackURL"][0]
    harness.assert_unchanged(before)


ACME_CALLBACK_SECRET = "whsec_YWNtZS1vd24tY2FsbGJhY2stc2lnbmluZy1rZXkhIQ=="


def test_only_a_tenant_with_a_callback_secret_of_its_own_may_name_a_callback(
    harness: Harness,
) -> None:
    """Without a default secret, acme (named in CALLBACK_SECRETS) gets callbacks signed with its
    own secret; globex (not named) is refused at enqueue, changing nothing."""
    settings = replace(
        harness.settings,
        callback_secret=type(harness.settings.callback_secret)(),
        callback_tenant_secrets=(("acme", Secret(ACME_CALLBACK_SECRET)),),
    )
    service = JobService(replace(harness.service.context, settings=settings))
    before = harness.snapshot()
    with pytest.raises(RequestInvalid) as caught:
        service.create_job({**JOB, "callbackURL": "https://93.184.216.34/cb"}, "globex")
    assert "CALLBACK_SECRETS" in caught.value.errors["callbackURL"][0]
    harness.assert_unchanged(before)
    job, _ = service.create_job({**JOB, "callbackURL": "https://93.184.216.34/cb"}, "acme")
    service.cancel_job(job.id, "acme")
    assert service.send_callback(job.id) == "sent"
    request = harness.outbound.requests[-1]
    assert Webhook(ACME_CALLBACK_SECRET).verify(request.content, dict(request.headers))
