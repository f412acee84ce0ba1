"""Paid images are never thrown away: another size is stored and flagged; a lost upload without
an imageURL ends its slot `upload_missing` with its cost, never at the deadline."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import Pipeline, job_keys, metric, staging_keys

pytestmark = pytest.mark.e2e

UPLOAD_WAIT_SECONDS = 2  # the e2e stack's setting
RECONCILE_GRACE_SECONDS = 3


def ledger(stack: Pipeline) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{stack.emulator_url}/_emulator/ledger", timeout=10).json()
    return answer


def test_an_image_of_another_size_is_stored_flagged_and_charged_once(
    stack: Pipeline, s3_client: Any
) -> None:
    before = metric(stack, "imagine_size_mismatches_total")
    stack.emulator(returned_size="1000x700")
    created = stack.submit(
        {"positivePrompt": "a redirected model", "resolution": "1K", "numberResults": 2}
    )
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded", job
    keys = [f"jobs/{job['id']}/{n:02d}.jpg" for n in range(2)]
    assert job_keys(s3_client, stack.bucket, job["id"]) == sorted(
        [*keys, f"jobs/{job['id']}/manifest.json"]
    )
    assert staging_keys(s3_client, stack.bucket, job["id"]) == []
    for slot, key in zip(job["slots"], keys, strict=True):
        assert slot["state"] == "stored" and slot["finalKey"] == key
        assert (slot["width"], slot["height"], slot["format"]) == (1000, 700, "JPG")
        assert slot["requested"] == {"width": 1024, "height": 1024, "format": "JPG"}
        assert slot["sizeMismatch"] is True and slot["formatMismatch"] is False
        obj = s3_client.get_object(Bucket=stack.bucket, Key=key)
        assert Image.open(io.BytesIO(obj["Body"].read())).size == (1000, 700)
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["state"] == "succeeded"
    for slot in manifest["slots"]:
        assert slot["state"] == "stored"
        assert slot["requested"] == {"width": 1024, "height": 1024, "format": "JPG"}
        assert (slot["width"], slot["height"], slot["sizeMismatch"]) == (1000, 700, True)
    charged = ledger(stack)["totals"]["byTask"]
    assert {slot["taskUUID"]: charged[slot["taskUUID"]]["count"] for slot in job["slots"]} == {
        slot["taskUUID"]: 1 for slot in job["slots"]
    }
    assert metric(stack, "imagine_size_mismatches_total") == before + 2


def test_a_swapped_size_is_stored_too(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(returned_size="swap")
    created = stack.submit({"positivePrompt": "a portrait", "width": 768, "height": 1408})
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded", job
    slot = job["slots"][0]
    assert (slot["width"], slot["height"]) == (1408, 768)
    assert slot["requested"] == {"width": 768, "height": 1408, "format": "JPG"}
    assert slot["sizeMismatch"] is True
    assert ledger(stack)["totals"]["byTask"][slot["taskUUID"]]["count"] == 1


def test_a_lost_upload_without_image_url_ends_upload_missing_with_its_cost(
    stack: Pipeline, s3_client: Any
) -> None:
    stack.emulator(upload_fail_rate=1.0, upload_fail_mode="skip", omit_image_url=True)
    started = time.monotonic()
    created = stack.submit({"positivePrompt": "an upload lost", "resolution": "1K"})
    job = stack.wait(created["id"], timeout=60)
    took = time.monotonic() - started
    assert job["state"] == "failed", job
    slot = job["slots"][0]
    assert slot["state"] == "failed"
    assert slot["error"]["code"] == "upload_missing"
    assert "imageURL" in slot["error"]["message"]
    assert slot["cost"] == pytest.approx(0.07)
    assert job["cost"] == pytest.approx(0.07)
    # Settled after UPLOAD_WAIT_SECONDS and a poll, long before the 900 s deadline.
    assert took < UPLOAD_WAIT_SECONDS + RECONCILE_GRACE_SECONDS + 15
    assert ledger(stack)["totals"]["byTask"][slot["taskUUID"]]["count"] == 1
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["slots"][0]["error"]["code"] == "upload_missing"
    assert manifest["cost"] == pytest.approx(0.07)
