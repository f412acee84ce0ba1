"""Trusted services enqueue with the Celery task `imagine.create_job`, by name."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Pipeline, check_stored_job

pytestmark = pytest.mark.e2e


def find_job(stack: Pipeline, key: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while True:
            jobs = client.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
            found = [job for job in jobs if job["idempotencyKey"] == key]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no job with idempotency key {key}"
            time.sleep(0.1)


def send(stack: Pipeline, *args: Any, **kwargs: Any) -> None:
    producer = Celery("client", broker=stack.env["REDIS_URL"])
    try:
        producer.send_task("imagine.create_job", args=list(args), kwargs=kwargs, queue="submit")
    finally:
        producer.close()


def test_create_job_by_name(stack: Pipeline, s3_client: Any) -> None:
    request = {"positivePrompt": "by name", "width": 1280, "height": 896}
    send(stack, request, "dev", idempotency_key="by-name-1")
    send(stack, request, "dev", idempotency_key="by-name-1")  # a retried enqueue
    send(stack, {**request, "positivePrompt": "sent after"}, "dev", idempotency_key="marker-1")
    job = stack.wait(find_job(stack, "by-name-1")["id"])
    check_stored_job(s3_client, stack, job, 1280, 896, "JPG")
    # The duplicate was queued before the marker: once the marker job has ended, the duplicate
    # message has been handled too, and it must not have made a second job.
    stack.wait(find_job(stack, "marker-1")["id"])
    assert find_job(stack, "by-name-1")["id"] == job["id"]


def test_a_refused_request_by_name_becomes_a_failed_job_with_the_errors(stack: Pipeline) -> None:
    send(
        stack,
        {"positivePrompt": "x", "width": 999, "height": 999, "ttl": 5},
        "dev",
        idempotency_key="by-name-refused",
    )
    job = stack.wait(find_job(stack, "by-name-refused")["id"])
    assert job["state"] == "failed"
    assert job["reason"].startswith("validation_failed")
    assert "width" in job["reason"] and "ttl" in job["reason"]
    assert job["manifestKey"] is not None
