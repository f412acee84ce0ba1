"""The pipeline under provider faults: circuit, dead letters, cancellation, deadlines."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline, check_stored_job, imagine, job_keys, metric

pytestmark = pytest.mark.e2e

MODEL = "xai:grok-imagine@image-pro"


def test_unavailable_model_pauses_submission_until_a_probe_succeeds(
    stack: Pipeline, s3_client: Any
) -> None:
    stack.emulator(model_unavailable=True)
    first = stack.submit({"positivePrompt": "paused one", "resolution": "1K"})
    second = stack.submit({"positivePrompt": "paused two", "resolution": "1K"})
    waiting = stack.wait(second["id"], until=lambda j: (j["reason"] or "").startswith("waiting"))
    # A model error pauses that model only, and each waiting job names it.
    assert waiting["reason"] == f"waiting: model {MODEL} paused by the provider (unknownModel)"
    assert waiting["state"] in {"queued", "running"}
    assert metric(stack, f'imagine_model_circuit_open{{model="{MODEL}"}}') == 1
    assert metric(stack, "imagine_circuit_open") == 0, "the account is not paused"
    shown = json.loads(imagine(stack, "circuit", "show").stdout)
    assert shown["state"] == "closed"
    assert [(m["model"], m["code"]) for m in shown["models"]] == [(MODEL, "unknownModel")]
    stack.emulator(model_unavailable=False)  # the provider recovers; a probe closes the circuit
    for created in (first, second):
        check_stored_job(s3_client, stack, stack.wait(created["id"]), 1024, 1024, "JPG")
    assert "imagine_model_circuit_open{" not in httpx.get(f"{stack.receiver_url}/metrics").text


def test_spent_retry_budget_dead_letters_then_replay_stores(
    stack: Pipeline, s3_client: Any
) -> None:
    stack.emulator(item_error_rate=1.0, item_error_permanent_share=0.0)
    created = stack.submit({"positivePrompt": "flaky provider", "resolution": "1K"})
    job = stack.wait(created["id"])
    assert job["state"] == "failed"
    slot = job["slots"][0]
    assert slot["state"] == "dead" and slot["attempt"] == 3
    assert slot["error"]["code"] == "timeoutProvider"
    listed = imagine(stack, "dlq", "list")
    assert f"{created['id']} slot 0" in listed.stdout
    stack.emulator(item_error_rate=0.0)
    replay = imagine(stack, "dlq", "replay")
    assert replay.returncode == 0, replay.stderr
    assert created["id"] in replay.stdout
    job = stack.wait(created["id"], until=lambda j: j["state"] == "succeeded")
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["manifestVersion"] == 2
    assert f"{created['id']} slot 0" not in imagine(stack, "dlq", "list").stdout


def test_cancelled_job_discards_late_results(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(latency_ms=1500)
    created = stack.submit({"positivePrompt": "cancel me", "resolution": "1K", "numberResults": 2})
    stack.wait(created["id"], until=lambda j: all(s["state"] == "submitted" for s in j["slots"]))
    with stack.client() as client:
        cancelled = client.post(f"/v1/jobs/{created['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled"
        again = client.post(f"/v1/jobs/{created['id']}/cancel")
        assert again.status_code == 409
    job = stack.wait(
        created["id"],
        timeout=30,
        until=lambda j: all(s["state"] == "discarded" for s in j["slots"]),
    )
    assert job["state"] == "cancelled"
    assert job_keys(s3_client, stack.bucket, created["id"]) == [
        f"jobs/{created['id']}/manifest.json"
    ]


def test_job_times_out_at_its_deadline_without_any_webhook(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(deliveries=False, latency_ms=120_000)
    created = stack.submit(
        {"positivePrompt": "never answered", "resolution": "1K", "deadlineSeconds": 30}
    )
    job = stack.wait(created["id"], timeout=60)
    assert job["state"] == "timed_out"
    assert job["slots"][0]["state"] == "failed"
    assert job["slots"][0]["error"]["code"] == "deadline"
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["state"] == "timed_out"


def test_images_in_flight_never_exceed_the_key_budget(stack: Pipeline, s3_client: Any) -> None:
    budget = int(stack.env.get("RUNWARE_MAX_IN_FLIGHT", "4"))
    stack.emulator(latency_ms=800)
    created = stack.submit({"positivePrompt": "budgeted", "resolution": "1K", "numberResults": 10})
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    intervals = []
    for slot in job["slots"]:
        task = httpx.get(
            f"{stack.emulator_url}/_emulator/tasks/{slot['taskUUID']}", timeout=10
        ).json()
        first_webhook = min(hook["at"] for hook in task["slots"][0]["webhooks"])
        intervals.append((task["createdAt"], first_webhook))
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    in_flight = peak = 0
    for _, change in events:
        in_flight += change
        peak = max(peak, in_flight)
    assert peak == budget


def test_duplicate_error_webhooks_cost_one_attempt_only(stack: Pipeline) -> None:
    from pipeline.signing import webhook_token

    stack.emulator(deliveries=False)
    created = stack.submit({"positivePrompt": "one failure, told three times", "resolution": "1K"})
    job = stack.wait(created["id"], until=lambda j: j["slots"][0]["state"] == "submitted")
    first = job["slots"][0]["taskUUID"]
    token = webhook_token(stack.env["WEBHOOK_SECRETS"].split(",")[0], first)
    failure = {
        "errors": [
            {
                "code": "timeoutProvider",
                "message": "The provider timed out.",
                "taskUUID": first,
                "taskType": "imageInference",
            }
        ]
    }
    answers = [
        httpx.post(
            f"{stack.receiver_url}/webhooks/runware/{first}",
            params={"token": token},
            json=failure,
            timeout=10,
        ).json()["results"]
        for _ in range(3)
    ]
    assert answers == [["retrying"], ["stale"], ["stale"]]
    job = stack.wait(
        created["id"],
        until=lambda j: (
            j["slots"][0]["state"] == "submitted" and j["slots"][0]["taskUUID"] != first
        ),
    )
    assert job["slots"][0]["attempt"] == 2
    with stack.client() as client:
        assert client.post(f"/v1/jobs/{created['id']}/cancel").status_code == 200
