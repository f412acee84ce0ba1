"""Redis or S3 killed under a running stack: prompt 503s naming it; no job lost or paid twice."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import supervise
from infra.stack import LocalStack, StackConfig
from pipeline.models import JOB_TERMINAL
from pipeline.signing import webhook_token

pytestmark = pytest.mark.chaos

JOB = {"positivePrompt": "a lighthouse at dawn", "resolution": "1K"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack with its own Redis (AOF) and S3 on fixed ports, so each can be killed and
    started again where the pipeline looks for it."""
    config = StackConfig(
        workdir=tmp_path / "stack", log_dir=tmp_path / "logs", workers=("deps",), concurrency=2,
        flower=False, reconcile_interval_seconds=1, reconcile_grace_seconds=3,
        ports={"s3": supervise.free_port()},
        extra_env={"UPLOAD_WAIT_SECONDS": "2", "FINALIZE_RETRY_SECONDS": "1",
                   "API_RATE_LIMIT": "100000/second"},
    )  # fmt: skip
    running = LocalStack(config, say=lambda _: None)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def client(stack: LocalStack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.urls["RECEIVER_URL"],
        timeout=15,
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )


def submit(stack: LocalStack, count: int) -> list[str]:
    with client(stack) as http:
        answers = [http.post("/v1/jobs", json=JOB) for _ in range(count)]
    assert all(answer.status_code in (200, 202) for answer in answers), answers
    return [answer.json()["id"] for answer in answers]


def kill(stack: LocalStack, name: str) -> None:
    """SIGKILL the server, then reap it (and close its log)."""
    process = stack.services[name].process
    process.kill()
    process.stop(timeout=5)


def timed(call: Any) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    answer = call()
    return answer, time.monotonic() - began


def assert_unavailable(answer: httpx.Response, elapsed: float, pattern: str) -> None:
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["code"] == "dependency_unavailable"
    assert re.fullmatch(pattern, body["message"]), body["message"]
    assert int(answer.headers["Retry-After"]) >= 1
    assert elapsed < 1.0, f"answered after {elapsed:.2f}s"


def wait_all_succeeded(stack: LocalStack, job_ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with client(stack) as http:
        pending = set(job_ids)
        while pending:
            for job_id in sorted(pending):
                answer = http.get(f"/v1/jobs/{job_id}")
                if answer.status_code == 200 and answer.json()["state"] in JOB_TERMINAL:
                    assert answer.json()["state"] == "succeeded", answer.json()
                    pending.discard(job_id)
            assert time.monotonic() < deadline, f"jobs not done: {sorted(pending)}"
            time.sleep(0.2)


def assert_charged_once(stack: LocalStack, job_ids: list[str]) -> None:
    ledger = httpx.get(f"{stack.urls['EMULATOR_URL']}/_emulator/ledger", timeout=10).json()
    assert all(row["count"] == 1 for row in ledger["totals"]["byTask"].values()), ledger
    assert ledger["totals"]["count"] == len(job_ids)


def webhook_answer(stack: LocalStack) -> httpx.Response:
    task_uuid = str(uuid.uuid4())
    token = webhook_token(stack.env["WEBHOOK_SECRETS"].split(",")[0], task_uuid)
    return httpx.post(
        f"{stack.urls['RECEIVER_URL']}/webhooks/runware/{task_uuid}",
        params={"token": token},
        json={"data": [{"taskType": "imageInference", "taskUUID": task_uuid}]},
        timeout=15,
    )


@pytest.mark.timeout(300)
def test_redis_killed_mid_run_answers_503_then_every_job_completes_once(
    stack: LocalStack,
) -> None:
    before = submit(stack, 3)
    port = stack.redis_port
    kill(stack, "redis")

    with client(stack) as http:
        answer, elapsed = timed(lambda: http.post("/v1/jobs", json=JOB))
        assert_unavailable(
            answer, elapsed, rf"redis unreachable at 127\.0\.0\.1:{port}: Connection refused"
        )
        ready, elapsed = timed(lambda: http.get("/readyz"))
    assert ready.status_code == 503 and elapsed < 1.0
    assert ready.json()["checks"] == {
        "redis": f"error: ConnectionError: Connection refused (127.0.0.1:{port})",
        "s3": "ok",
    }
    hook, elapsed = timed(lambda: webhook_answer(stack))
    assert_unavailable(hook, elapsed, r"redis unreachable at .*")

    stack.start_redis()
    after = submit(stack, 2)
    wait_all_succeeded(stack, before + after)
    assert_charged_once(stack, before + after)


@pytest.mark.timeout(300)
def test_s3_killed_mid_run_answers_503_then_every_job_completes_once(stack: LocalStack) -> None:
    endpoint = stack.urls["S3_ENDPOINT_URL"].removeprefix("http://")
    kill(stack, "s3")

    with client(stack) as http:
        ready, elapsed = timed(lambda: http.get("/readyz"))
        assert ready.status_code == 503 and elapsed < 1.0
        assert ready.json()["checks"] == {
            "redis": "ok",
            "s3": f"error: EndpointConnectionError: Connection refused ({endpoint})",
        }
        # Jobs are accepted without S3 (presigning is local): workers wait for it.
        during = submit(stack, 3)

    # The local S3 server keeps its objects in memory: started again, it needs its bucket.
    stack.start_s3()
    stack._prepare_bucket()
    wait_all_succeeded(stack, during)
    assert_charged_once(stack, during)
