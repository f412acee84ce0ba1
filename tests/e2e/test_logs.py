"""No webhook token, presigned signature or API key ever reaches the pipeline's own logs."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_logs_carry_no_credentials(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(put_order="after")  # exercises the deferred promotion and its logging too
    created = stack.submit({"positivePrompt": "quiet logs", "resolution": "1K", "numberResults": 2})
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded"
    task_uuid = job["slots"][0]["taskUUID"]
    forged = httpx.post(
        f"{stack.receiver_url}/webhooks/runware/{task_uuid}",
        params={"token": "forged-token-value"},
        json={},
        timeout=10,
    )
    assert forged.status_code == 401
    secrets = [
        "token=",
        "X-Amz-Signature",
        "forged-token-value",
        stack.api_key,
        stack.env["RUNWARE_API_KEY"],
        *stack.env["WEBHOOK_SECRETS"].split(","),
    ]
    ours = [
        service for service in stack.services if service.name in {"receiver", "worker-e2e", "beat"}
    ]
    assert len(ours) == 3
    for service in ours:
        text = service.process.log_text()
        assert created["id"] in text or service.name != "receiver"
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... found in the {service.name} log"


def test_task_failures_and_the_pipelines_lines_reach_the_worker_log(stack: Pipeline) -> None:
    """Celery's own records and the pipeline's JSON lines both land in the worker's log."""
    from pipeline.config import Settings
    from pipeline.dispatch import create_celery

    stack.emulator(put_order="after")  # the promotion then runs in the worker
    created = stack.submit({"positivePrompt": "logged", "resolution": "1K"})
    assert stack.wait(created["id"])["state"] == "succeeded"
    app = create_celery(Settings.from_env(stack.env))
    # A message a worker cannot run (an argument is missing): its failure must be logged.
    failing = app.send_task("imagine.finalize_slot", args=[created["id"]], queue="finalize")
    worker = next(service for service in stack.services if service.name == "worker-e2e")
    deadline = time.monotonic() + 30
    while f"imagine.finalize_slot[{failing.id}] raised" not in worker.process.log_text():
        assert time.monotonic() < deadline, "the task failure never reached the worker log"
        time.sleep(0.2)
    lines = [
        json.loads(line) for line in worker.process.log_text().splitlines() if line.startswith("{")
    ]
    failure = next(line for line in lines if f"[{failing.id}] raised" in line["message"])
    assert failure["level"] == "ERROR" and "TypeError" in failure.get("exc", failure["message"])
    assert any(
        line.get("job_id") == created["id"] and line["message"] == "image stored" for line in lines
    )
