"""No webhook token, presigned signature or API key ever reaches the pipeline's own logs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_logs_carry_no_credentials(stack: Pipeline, s3_client: Any) -> None:
    stack.emulator(put_order="after")  # exercises the deferred promotion and its logging too
    created = stack.submit({"positivePrompt": "quiet logs", "resolution": "1K",
                            "numberResults": 2})
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded"
    task_uuid = job["slots"][0]["taskUUID"]
    forged = httpx.post(f"{stack.receiver_url}/webhooks/runware/{task_uuid}",
                        params={"token": "forged-token-value"}, json={}, timeout=10)
    assert forged.status_code == 401
    secrets = ["token=", "X-Amz-Signature", "forged-token-value", stack.api_key,
               stack.env["RUNWARE_API_KEY"], *stack.env["WEBHOOK_SECRETS"].split(",")]
    ours = [service for service in stack.services
            if service.name in {"receiver", "worker-e2e", "beat"}]
    assert len(ours) == 3
    for service in ours:
        text = service.process.log_text()
        assert created["id"] in text or service.name != "receiver"
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... found in the {service.name} log"
