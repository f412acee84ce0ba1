"""Jobs through every real process: receiver over HTTP, a Celery worker, beat, emulator, S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline, check_stored_job, job_keys

pytestmark = pytest.mark.e2e

EXAMPLES = json.loads(
    (
        Path(__file__).resolve().parents[2] / "infra" / "fixtures" / "model-page-examples.json"
    ).read_text()
)


def test_model_page_examples_land_in_s3(stack: Pipeline, s3_client: Any) -> None:
    jobs = [stack.submit(example["request"]) for example in EXAMPLES]
    for example, created in zip(EXAMPLES, jobs, strict=True):
        assert created["clientTaskUUID"] == example["request"]["taskUUID"]
        job = stack.wait(created["id"])
        manifest = check_stored_job(s3_client, stack, job, 1280, 896, "JPG")
        assert manifest["request"]["positivePrompt"] == example["request"]["positivePrompt"]
        assert job["cost"] == pytest.approx(0.07)
        # The caller's taskUUID is never the provider's.
        assert job["slots"][0]["taskUUID"] != example["request"]["taskUUID"]


def test_four_png_images_in_one_job(stack: Pipeline, s3_client: Any) -> None:
    created = stack.submit(
        {
            "positivePrompt": "four lighthouses",
            "width": 1024,
            "height": 1024,
            "numberResults": 4,
            "outputFormat": "PNG",
            "metadata": {"campaign": "spring-24"},
        }
    )
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "PNG")
    assert len({slot["taskUUID"] for slot in job["slots"]}) == 4
    head = s3_client.head_object(Bucket=stack.bucket, Key=job["slots"][3]["finalKey"])
    assert head["Metadata"]["user-campaign"] == "spring-24"
    ledger = httpx.get(f"{stack.emulator_url}/_emulator/ledger", timeout=10).json()
    charged = {entry["taskUUID"] for entry in ledger["entries"]}
    assert charged == {slot["taskUUID"] for slot in job["slots"]}


@pytest.mark.parametrize("put_order", ["before", "after", "never"])
@pytest.mark.parametrize("envelope", ["wrapped", "flat"])
def test_every_delivery_order_and_envelope(
    stack: Pipeline, s3_client: Any, put_order: str, envelope: str
) -> None:
    stack.emulator(put_order=put_order, envelope=envelope, webhook_status_field=True)
    created = stack.submit(
        {
            "positivePrompt": f"order {put_order} {envelope}",
            "resolution": "1K",
            "outputFormat": "WEBP",
            "numberResults": 2,
        }
    )
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "WEBP")


@pytest.mark.parametrize("mode", ["skip", "truncate"])
def test_failed_uploads_are_replaced_by_the_hosted_image(
    stack: Pipeline, s3_client: Any, mode: str
) -> None:
    stack.emulator(upload_fail_rate=1.0, upload_fail_mode=mode)
    created = stack.submit(
        {
            "positivePrompt": f"upload {mode}",
            "width": 896,
            "height": 1280,
            "numberResults": 2,
            "outputFormat": "PNG",
        }
    )
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 896, 1280, "PNG")


@pytest.mark.parametrize("placement", ["errors", "item"])
def test_permanent_item_error_fails_the_slot_with_the_provider_code(
    stack: Pipeline, s3_client: Any, placement: str
) -> None:
    stack.emulator(item_error_rate=1.0, item_error_permanent_share=1.0, error_placement=placement)
    created = stack.submit({"positivePrompt": "refused", "resolution": "1K"})
    job = stack.wait(created["id"])
    assert job["state"] == "failed"
    assert job["slots"][0]["state"] == "failed"
    assert job["slots"][0]["error"]["code"] == "providerContentPolicyViolation"
    assert job_keys(s3_client, stack.bucket, job["id"]) == [f"jobs/{job['id']}/manifest.json"]
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["state"] == "failed"
    assert manifest["slots"][0]["error"]["code"] == "providerContentPolicyViolation"


def test_dropped_webhooks_are_recovered_by_the_reconciler(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(drop_webhook_rate=1.0)
    created = stack.submit(
        {"positivePrompt": "silent provider", "width": 1408, "height": 768, "numberResults": 2}
    )
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1408, 768, "JPG")


def test_wrong_webhook_token_gets_401_and_changes_nothing(stack: Pipeline) -> None:
    stack.emulator(deliveries=False)
    created = stack.submit({"positivePrompt": "forged", "resolution": "1K"})
    job = stack.wait(created["id"], until=lambda j: j["slots"][0]["state"] == "submitted")
    task_uuid = job["slots"][0]["taskUUID"]
    forged = {
        "data": [
            {
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "imageUUID": "5d2d0c6e-1a43-4c36-8a3e-1d7e43f2b1a0",
                "imageURL": "https://im.runware.ai/image/forged.jpg",
            }
        ]
    }
    for token in ("wrong", ""):
        answer = httpx.post(
            f"{stack.receiver_url}/webhooks/runware/{task_uuid}",
            params={"token": token},
            json=forged,
            timeout=10,
        )
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthorized"
    after = stack.wait(created["id"], until=lambda j: True)
    assert after["slots"][0]["state"] == "submitted"
    assert after["slots"][0]["imageUUID"] is None
    with stack.client() as client:
        assert client.post(f"/v1/jobs/{created['id']}/cancel").json()["state"] == "cancelled"


def test_api_refuses_bad_requests_with_one_error_shape(stack: Pipeline) -> None:
    with stack.client() as client:
        invalid = client.post(
            "/v1/jobs", json={"positivePrompt": "x", "width": 1000, "height": 1000, "ttl": 60}
        )
        assert invalid.status_code == 422
        body = invalid.json()
        assert set(body) == {"code", "status", "message", "errors"}
        assert set(body["errors"]) == {"width", "ttl"}
        assert client.post("/v1/jobs", content=b"x=1").status_code == 415
        assert client.get("/v1/jobs/no-such-job").status_code == 404
    anonymous = httpx.post(f"{stack.receiver_url}/v1/jobs", json={"positivePrompt": "x"})
    assert anonymous.status_code == 401


def test_idempotency_key_never_makes_a_second_job(stack: Pipeline) -> None:
    body = {"positivePrompt": "once", "resolution": "1K", "idempotencyKey": "order-42"}
    first = stack.submit(body)
    again = stack.submit(body)
    assert again["id"] == first["id"]
    with stack.client() as client:
        clash = client.post("/v1/jobs", json={**body, "positivePrompt": "twice"})
    assert clash.status_code == 409
    stack.wait(first["id"])
