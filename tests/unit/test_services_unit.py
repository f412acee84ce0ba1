"""The pure parts of the use cases: S3 key layout, request hashing, job views and task payloads."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.documents import job_view, manifest
from pipeline.enqueue import canonical_hash
from pipeline.models import Job, JobState, Slot, SlotState
from pipeline.signing import verify_webhook_token
from pipeline.storage import KeyLayout, MemoryObjectStorage
from pipeline.submission import task_payload, webhook_url

pytestmark = pytest.mark.unit

JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
TASK = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
SECRET = "webhook-secret-0123456789"
CREATED = 1_700_000_000.0


class RecordingDispatcher:
    """Keeps the nudges it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        self.sent.append(("submit", (job_id, countdown)))

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        self.sent.append(("finalize", (job_id, slot, countdown)))

    def notify_job(self, job_id: str) -> None:
        self.sent.append(("notify", job_id))

    def queue_lengths(self) -> dict[str, int]:
        return {}


def context(prefix: str = "") -> Context:
    settings = Settings.from_env(
        {
            "S3_PREFIX": prefix,
            "WEBHOOK_SECRETS": SECRET,
            "PUBLIC_BASE_URL": "https://hooks.example.com",
        }
    )
    # The store, circuit and budget are never touched by the pure functions under test.
    return Context(
        settings=settings,
        store=MagicMock(),
        storage=MemoryObjectStorage(),
        dispatcher=RecordingDispatcher(),
        circuit=MagicMock(),
        budget=MagicMock(),
        http=MagicMock(),
    )


def make_job(slots: list[Slot], **overrides: Any) -> Job:
    values: dict[str, Any] = {
        "id": JOB,
        "tenant": "acme",
        "state": JobState.PARTIALLY_SUCCEEDED,
        "model": "xai:grok-imagine@image-pro",
        "params": {
            "model": "xai:grok-imagine@image-pro",
            "positivePrompt": "a lighthouse",
            "width": 1280,
            "height": 896,
            "numberResults": len(slots),
            "outputFormat": "PNG",
        },
        "slot_count": len(slots),
        "output_format": "PNG",
        "created_at": CREATED,
        "updated_at": CREATED + 30,
        "deadline_at": CREATED + 900,
        "client_task_uuid": "1607528b-b740-4975-8cc1-6dc6b2d18f60",
        "metadata": {"order": "42"},
        "slots": slots,
    }
    values.update(overrides)
    return Job(**values)


def stored_slot() -> Slot:
    return Slot(
        job_id=JOB,
        slot=0,
        state=SlotState.STORED,
        attempt=2,
        task_uuid=TASK,
        image_uuid="fd43ce5d-bc6d-487f-91d0-5d417cfcdb3c",
        seed=109682711,
        cost=0.07,
        final_key=f"jobs/{JOB}/00.png",
        width=1280,
        height=896,
        size=2048,
        etag='"abc"',
        error_code="timeoutProvider",
        error_message="first attempt",
    )


def failed_slot() -> Slot:
    return Slot(
        job_id=JOB,
        slot=1,
        state="failed",
        task_uuid=None,
        error_code="providerContentPolicyViolation",
        error_message="refused",
    )


# --- key layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "images/", "a/b/"])
def test_key_layout(prefix: str) -> None:
    layout = KeyLayout(prefix)
    assert layout.staging(JOB, TASK) == f"{prefix}staging/{JOB}/{TASK}"
    assert layout.final(JOB, 0, "JPG") == f"{prefix}jobs/{JOB}/00.jpg"
    assert layout.final(JOB, 7, "PNG") == f"{prefix}jobs/{JOB}/07.png"
    assert layout.final(JOB, 19, "WEBP") == f"{prefix}jobs/{JOB}/19.webp"
    assert layout.manifest(JOB) == f"{prefix}jobs/{JOB}/manifest.json"
    assert layout.job_prefix(JOB) == f"{prefix}jobs/{JOB}/"


def test_the_service_lays_keys_out_under_the_configured_prefix() -> None:
    assert context("images/").layout.manifest(JOB) == f"images/jobs/{JOB}/manifest.json"


# --- request hashing --------------------------------------------------------------------------


def test_canonical_hash_ignores_key_order() -> None:
    first = {
        "positivePrompt": "p",
        "width": 1024,
        "height": 1024,
        "safety": {"mode": "fast", "checkContent": True},
        "metadata": {"a": "1", "b": "2"},
    }
    second = {
        "metadata": {"b": "2", "a": "1"},
        "safety": {"checkContent": True, "mode": "fast"},
        "height": 1024,
        "width": 1024,
        "positivePrompt": "p",
    }
    assert canonical_hash(first) == canonical_hash(second)
    assert len(canonical_hash(first)) == 64


def test_canonical_hash_sees_every_value() -> None:
    base = {"positivePrompt": "p", "width": 1024, "height": 1024}
    assert canonical_hash(base) != canonical_hash({**base, "width": 1280})
    assert canonical_hash(base) != canonical_hash({**base, "numberResults": 1})
    assert canonical_hash({"inputs": ["a", "b"]}) != canonical_hash({"inputs": ["b", "a"]})


# --- views ------------------------------------------------------------------------------------


def test_job_view_has_the_contract_shape() -> None:
    job = make_job(
        [stored_slot(), failed_slot()],
        manifest_key=f"jobs/{JOB}/manifest.json",
        ended_at=CREATED + 60,
    )
    view = job_view(job)
    assert {
        "id",
        "tenant",
        "state",
        "model",
        "numberResults",
        "outputFormat",
        "createdAt",
        "updatedAt",
        "deadlineAt",
        "reason",
        "clientTaskUUID",
        "metadata",
        "manifestKey",
        "cost",
        "slots",
    } <= set(view)
    assert view["id"] == JOB
    assert view["state"] == "partially_succeeded"
    assert view["numberResults"] == 2
    assert view["outputFormat"] == "PNG"
    assert view["createdAt"] == "2023-11-14T22:13:20Z"
    assert view["deadlineAt"] == "2023-11-14T22:28:20Z"
    assert view["clientTaskUUID"] == "1607528b-b740-4975-8cc1-6dc6b2d18f60"
    assert view["metadata"] == {"order": "42"}
    assert view["manifestKey"] == f"jobs/{JOB}/manifest.json"
    assert view["cost"] == pytest.approx(0.07)
    stored, failed = view["slots"]
    assert {
        "slot",
        "state",
        "taskUUID",
        "attempt",
        "finalKey",
        "imageUUID",
        "seed",
        "cost",
        "error",
    } <= set(stored)
    assert stored["slot"] == 0
    assert stored["state"] == "stored"
    assert stored["attempt"] == 2
    assert stored["finalKey"] == f"jobs/{JOB}/00.png"
    assert stored["seed"] == 109682711
    assert stored["error"] is None  # an earlier attempt's error is not the outcome
    assert failed["state"] == "failed"
    assert failed["error"] == {"code": "providerContentPolicyViolation", "message": "refused"}
    assert failed["finalKey"] is None


def test_job_view_cost_is_null_until_a_cost_is_known() -> None:
    job = make_job([Slot(job_id=JOB, slot=0, state="submitted", task_uuid=TASK)], state="running")
    view = job_view(job)
    assert view["cost"] is None
    assert view["manifestKey"] is None
    assert view["endedAt"] is None


def test_manifest_shape() -> None:
    job = make_job([stored_slot(), failed_slot()])
    document = manifest(job, JobState.PARTIALLY_SUCCEEDED, 3, CREATED + 60)
    assert document["manifestVersion"] == 3
    assert document["jobId"] == JOB
    assert document["state"] == "partially_succeeded"
    assert document["endedAt"] == "2023-11-14T22:14:20Z"
    assert document["request"]["positivePrompt"] == "a lighthouse"
    assert document["clientTaskUUID"] == job.client_task_uuid
    assert document["cost"] == pytest.approx(0.07)
    assert [s["state"] for s in document["slots"]] == ["stored", "failed"]
    assert document["slots"][1]["error"]["code"] == "providerContentPolicyViolation"


# --- what goes to the provider ----------------------------------------------------------------


def test_the_webhook_url_carries_a_token_that_verifies() -> None:
    url = webhook_url(context(), TASK)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"https://hooks.example.com/webhooks/runware/{TASK}"
    )
    [token] = parse_qs(parts.query)["token"]
    assert verify_webhook_token([SECRET], TASK, token)


def test_a_task_payload_is_one_async_image_staged_under_its_key() -> None:
    svc = context("images/")
    job = make_job(
        [Slot(job_id=JOB, slot=0, state="pending")], state="running", deadline_at=CREATED + 10**9
    )
    payload = task_payload(svc, job, job.slots[0], TASK)
    assert payload["taskType"] == "imageInference"
    assert payload["taskUUID"] == TASK
    assert payload["model"] == job.model
    assert (payload["width"], payload["height"]) == (1280, 896)
    assert payload["numberResults"] == 1
    assert payload["outputFormat"] == "PNG"
    assert payload["deliveryMethod"] == "async"
    assert payload["includeCost"] is True
    assert payload["ttl"] >= 60
    assert payload["webhookURL"] == webhook_url(svc, TASK)
    assert payload["uploadEndpoint"].startswith(
        f"http://memory-storage.invalid/memory/images/staging/{JOB}/{TASK}?"
    )
    # The caller's own taskUUID stays on the job; it never reaches the provider.
    assert job.client_task_uuid not in str(payload)
