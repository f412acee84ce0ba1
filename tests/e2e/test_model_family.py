"""The Grok Imagine family end to end: a job per model, a retired model with and without fallback.

Each run is checked against the emulator's ledger: the model that made each image and its price.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline, check_stored_job

pytestmark = pytest.mark.e2e

PRO = "xai:grok-imagine@image-pro"
IMAGE = "xai:grok-imagine@image"
QUALITY = "xai:grok-imagine@image-quality"
# What the emulator charges per image (its own catalog; the quality price is assumed there).
PRICE = {PRO: 0.07, IMAGE: 0.02, QUALITY: 0.045}


def ledger(stack: Pipeline) -> dict[str, Any]:
    response = httpx.get(f"{stack.emulator_url}/_emulator/ledger", timeout=10)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def manifest_of(s3_client: Any, stack: Pipeline, job: dict[str, Any]) -> dict[str, Any]:
    body = s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    manifest: dict[str, Any] = json.loads(body)
    return manifest


def check_charged(stack: Pipeline, job: dict[str, Any], model: str) -> None:
    """Each slot was made by `model` and charged once at its price, which the slot shows."""
    charged = {entry["taskUUID"]: entry for entry in ledger(stack)["entries"]}
    assert len(charged) == len(job["slots"])
    for slot in job["slots"]:
        entry = charged[slot["taskUUID"]]
        assert (entry["model"], entry["cost"]) == (model, PRICE[model])
        assert slot["cost"] == PRICE[model]


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (PRO, {"resolution": "2K"}, (2048, 2048)),
        (IMAGE, {"width": 1408, "height": 768}, (1408, 768)),
        (QUALITY, {"width": 2816, "height": 1536}, (2816, 1536)),
    ],
    ids=["pro", "image", "quality"],
)
def test_a_job_for_each_model_runs_end_to_end(
    stack: Pipeline,
    s3_client: Any,
    model: str,
    size: dict[str, Any],
    expected: tuple[int, int],
) -> None:
    created = stack.submit(
        {"model": model, "positivePrompt": "a harbour at noon", "numberResults": 2, **size}
    )
    job = stack.wait(created["id"])
    manifest = check_stored_job(s3_client, stack, job, *expected, "JPG")
    assert job["model"] == model and manifest["model"] == model
    check_charged(stack, job, model)
    assert ledger(stack)["totals"]["byModel"] == {
        model: {"count": 2, "cost": round(2 * PRICE[model], 6)}
    }
    assert job["cost"] == pytest.approx(2 * PRICE[model])
    assert [s["cost"] for s in manifest["slots"]] == [PRICE[model]] * 2


def test_a_retired_model_with_a_fallback_finishes_on_the_fallback(
    stack: Pipeline, s3_client: Any
) -> None:
    stack.emulator(retired_models=[PRO])
    created = stack.submit(
        {
            "model": PRO,
            "fallbackModel": IMAGE,
            "positivePrompt": "a harbour at dusk",
            "resolution": "1K",
            "numberResults": 2,
        }
    )
    job = stack.wait(created["id"])
    manifest = check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    check_charged(stack, job, IMAGE)
    assert [(s["model"], s["cost"]) for s in job["slots"]] == [(IMAGE, PRICE[IMAGE])] * 2
    assert [(s["model"], s["cost"]) for s in manifest["slots"]] == [(IMAGE, PRICE[IMAGE])] * 2
    assert job["cost"] == pytest.approx(2 * PRICE[IMAGE])
    # The retired model charged nothing: it refused every task.
    assert set(ledger(stack)["totals"]["byModel"]) == {IMAGE}


def test_a_retired_model_without_a_fallback_waits_naming_the_model(
    stack: Pipeline, s3_client: Any
) -> None:
    stack.emulator(retired_models=[QUALITY])
    created = stack.submit({"model": QUALITY, "positivePrompt": "a quiet pier", "resolution": "1K"})
    waiting = stack.wait(created["id"], until=lambda j: (j["reason"] or "").startswith("waiting"))
    assert waiting["state"] in {"queued", "running"}
    assert QUALITY in waiting["reason"] and "invalidModel" in waiting["reason"]
    assert ledger(stack)["totals"]["count"] == 0
    # Another model is not paused with it.
    other = stack.wait(
        stack.submit({"model": IMAGE, "positivePrompt": "a pier", "resolution": "1K"})["id"]
    )
    check_stored_job(s3_client, stack, other, 1024, 1024, "JPG")
    # The model comes back: a probe resumes it and the job finishes on it.
    stack.emulator(retired_models=[])
    job = stack.wait(created["id"])
    check_stored_job(s3_client, stack, job, 1024, 1024, "JPG")
    assert job["model"] == QUALITY
    assert ledger(stack)["totals"]["byModel"][QUALITY] == {"count": 1, "cost": PRICE[QUALITY]}
