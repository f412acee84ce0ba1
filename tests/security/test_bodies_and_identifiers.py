"""Bodies, identifiers and headers: refused at the edge, in one error shape, changing nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.conftest import ACME_KEY, Harness, assert_error, success_body

pytestmark = pytest.mark.security

JOB = {"positivePrompt": "a lighthouse at dawn", "width": 1024, "height": 1024}


# ---------------------------------------------------------------- webhook bodies
@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "image/jpeg",
    ],
)
def test_a_webhook_body_of_another_media_type_is_415(harness: Harness, content_type: str) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    answer = harness.webhook(task, success_body(task), content_type=content_type)
    assert_error(answer, 415)
    harness.assert_unchanged(before)


RAW_BODIES: dict[str, tuple[bytes, int]] = {
    "not JSON": (b"this is not json", 400),
    "truncated JSON": (b'{"data": [{"taskUUID": ', 400),
    "not UTF-8": (b'{"data": "\xff\xfe"}', 400),
    "empty": (b"", 400),
    "nested 30k deep": (b"[" * 30_000 + b"]" * 30_000, 400),
    "nested 12k deep, unclosed": (b'{"a":' * 12_000, 400),
    "nested 33 deep": (b"[" * 33 + b"]" * 33, 400),
    "JSON null": (b"null", 422),
    "a number": (b"42", 422),
    "a string": (b'"data"', 422),
    "data not an array": (b'{"data": "x"}', 422),
    "errors not an array": (b'{"errors": {"code": 1}}', 422),
    "an item without taskUUID": (b'{"data": [{"imageUUID": "x"}]}', 422),
    "no result at all": (b'{"data": []}', 422),
}


@pytest.mark.parametrize(("raw", "status"), RAW_BODIES.values(), ids=RAW_BODIES.keys())
def test_a_malformed_webhook_body_is_refused(harness: Harness, raw: bytes, status: int) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    assert_error(harness.webhook(task, raw=raw), status)
    harness.assert_unchanged(before)


def test_a_webhook_over_the_body_limit_is_413(harness: Harness) -> None:
    _job, task = harness.submitted_job()
    body = success_body(task, padding="x" * harness.settings.webhook_max_body_bytes)
    before = harness.snapshot()
    assert_error(harness.webhook(task, body), 413)
    harness.assert_unchanged(before)


@pytest.mark.parametrize("ended", [False, True])
def test_a_webhook_with_thousands_of_items_is_refused_at_once(
    harness: Harness, ended: bool
) -> None:
    _job, task = harness.succeeded_job() if ended else harness.submitted_job()
    items = [{"taskUUID": task, "status": "error", "error": {"code": "x"}}] * 9531
    before = harness.snapshot()
    assert_error(harness.webhook(task, {"errors": items}), 413, "request_entity_too_large")
    harness.assert_unchanged(before)


def test_more_items_than_a_result_can_hold_are_refused_even_within_the_size_limit(
    harness: Harness,
) -> None:
    _job, task = harness.submitted_job()
    before = harness.snapshot()
    body = assert_error(
        harness.webhook(task, {"data": [{"taskUUID": task}] * 65}), 422, "validation_failed"
    )
    assert "at most 64 items" in json.dumps(body["errors"])
    harness.assert_unchanged(before)


def test_a_provider_image_uuid_with_crlf_is_stored_safely(harness: Harness) -> None:
    """A paid image must land even when the provider's identifiers are odd."""
    job_id, task = harness.submitted_job()
    harness.s3.put_object(
        Bucket=harness.bucket, Body=_jpeg(), Key=harness.service.layout.staging(job_id, task)
    )
    answer = harness.webhook(
        task,
        success_body(task, imageUUID="img\r\nX-Amz-Acl: public\u00e9", seed=10**40, cost="free"),
    )
    assert answer.status_code == 200
    job = harness.store.get_job(job_id)
    assert job is not None and job.state == "succeeded"
    key = job.slots[0].final_key
    assert key is not None
    metadata = harness.s3.head_object(Bucket=harness.bucket, Key=key)["Metadata"]
    assert metadata["imagine-image-uuid"] == "img__X-Amz-Acl__public_"
    assert "imagine-seed" not in metadata and job.slots[0].cost is None


def _jpeg() -> bytes:
    from tests.security.conftest import jpeg

    return jpeg()


# ---------------------------------------------------------------- job ids in paths
BAD_IDS = [
    "x",
    "x:slot:0",
    "1607528b-b740-4975-8cc1-6dc6b2d18f60:slot:0",
    "1607528B-B740-4975-8CC1-6DC6B2D18F60",
    "*",
    "a" * 5000,
    "%0d%0aX-Evil:1",
]


@pytest.mark.parametrize("job_id", BAD_IDS)
@pytest.mark.parametrize("method", ["GET", "CANCEL"])
def test_a_job_id_that_is_not_a_uuid_is_404_before_any_lookup(
    harness: Harness, job_id: str, method: str
) -> None:
    existing, _task = harness.submitted_job()
    path = f"/v1/jobs/{job_id.replace('1607528b-b740-4975-8cc1-6dc6b2d18f60', existing)}"
    before = harness.snapshot()
    if method == "GET":
        answer = harness.api("GET", path)
    else:
        answer = harness.api("POST", f"{path}/cancel")
    assert_error(answer, 404, "not_found")
    harness.assert_unchanged(before)


def test_a_slot_key_behind_an_existing_job_id_is_404(harness: Harness) -> None:
    job_id, _task = harness.submitted_job()
    before = harness.snapshot()
    assert_error(harness.api("GET", f"/v1/jobs/{job_id}:slot:0"), 404, "not_found")
    harness.assert_unchanged(before)


# ---------------------------------------------------------------- headers and queries
@pytest.mark.parametrize("key", ["k" * 8000, "k" * 256, "has space", "tab\there", "", "caf\u00e9"])
def test_a_bad_idempotency_key_header_is_422(harness: Harness, key: str) -> None:
    before = harness.snapshot()
    answer = harness.api(
        "POST",
        "/v1/jobs",
        json=JOB,
        headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")},
    )
    body = assert_error(answer, 422, "validation_failed")
    assert "Idempotency-Key" in body["errors"]
    harness.assert_unchanged(before)


def test_an_idempotency_key_of_255_characters_is_accepted(harness: Harness) -> None:
    answer = harness.api("POST", "/v1/jobs", json=JOB, headers={"Idempotency-Key": "k" * 255})
    assert answer.status_code == 202
    assert answer.json["idempotencyKey"] == "k" * 255


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=bogus", "state"),
        ("state=queued%0d%0a", "state"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=abc", "limit"),
        ("cursor=nan", "cursor"),
        ("cursor=abc", "cursor"),
        ("tenant=globex", "tenant"),
    ],
)
def test_a_bad_list_query_is_422_naming_the_field(harness: Harness, query: str, field: str) -> None:
    harness.submitted_job()
    before = harness.snapshot()
    body = assert_error(harness.api("GET", f"/v1/jobs?{query}"), 422, "validation_failed")
    assert field in body["errors"]
    harness.assert_unchanged(before)


# ---------------------------------------------------------------- job bodies
BAD_JOBS: dict[str, tuple[Any, str]] = {
    "metadata over S3's limit": (
        {**JOB, "metadata": {f"k{i}": "v" * 200 for i in range(6)}},
        "metadata",
    ),
    "metadata key with CRLF": ({**JOB, "metadata": {"a\r\nb": "v"}}, "metadata"),
    "metadata value not ASCII": ({**JOB, "metadata": {"a": "caf\u00e9"}}, "metadata"),
    "metadata value with a newline": ({**JOB, "metadata": {"a": "x\ny"}}, "metadata"),
    "eleven metadata pairs": ({**JOB, "metadata": {f"k{i}": "v" for i in range(11)}}, "metadata"),
    "webhookURL set by the caller": ({**JOB, "webhookURL": "https://evil.example/"}, "webhookURL"),
    "uploadEndpoint set by the caller": (
        {**JOB, "uploadEndpoint": "https://evil.example/"},
        "uploadEndpoint",
    ),
    "unknown field": ({**JOB, "apiKey": "x"}, "apiKey"),
    "idempotencyKey with spaces": ({**JOB, "idempotencyKey": "a b"}, "idempotencyKey"),
    "callbackURL with port 99999": (
        {**JOB, "callbackURL": "http://127.0.0.1:99999/cb"},
        "callbackURL",
    ),
}


@pytest.mark.parametrize(("body", "field"), BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_a_bad_job_request_is_422_naming_the_field(harness: Harness, body: Any, field: str) -> None:
    before = harness.snapshot()
    answer = assert_error(harness.api("POST", "/v1/jobs", json=body), 422, "validation_failed")
    assert field in answer["errors"], answer
    harness.assert_unchanged(before)


def test_a_job_request_nested_too_deep_is_400(harness: Harness) -> None:
    before = harness.snapshot()
    raw = b'{"positivePrompt": "x", "metadata": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001
    answer = harness.api("POST", "/v1/jobs", data=raw, content_type="application/json")
    assert_error(answer, 400, "bad_request")
    harness.assert_unchanged(before)


def test_metadata_at_the_limit_lands_on_the_stored_object(harness: Harness) -> None:
    metadata = {f"k{i}": "v" * (1024 // 4 - 7) for i in range(4)}  # 4 x (7 + 249) = 1024
    job_id, task = harness.submitted_job(metadata=metadata)
    harness.s3.put_object(
        Bucket=harness.bucket, Body=_jpeg(), Key=harness.service.layout.staging(job_id, task)
    )
    assert harness.webhook(task, success_body(task)).status_code == 200
    job = harness.store.get_job(job_id)
    assert job is not None and job.state == "succeeded" and job.slots[0].final_key
    stored = harness.s3.head_object(Bucket=harness.bucket, Key=job.slots[0].final_key)
    assert {k: v for k, v in stored["Metadata"].items() if k.startswith("user-")} == {
        f"user-{key}": value for key, value in metadata.items()
    }


def test_a_job_without_an_api_key_is_401_and_writes_nothing(harness: Harness) -> None:
    before = harness.snapshot()
    assert_error(harness.api("POST", "/v1/jobs", json=JOB, key=None), 401, "unauthorized")
    assert_error(harness.api("POST", "/v1/jobs", json=JOB, key=ACME_KEY + "x"), 401)
    harness.assert_unchanged(before)
