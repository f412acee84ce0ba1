"""What operators see of a running pipeline: Flower's broker page, tasks and failures, and the
JSON lines of the worker and receiver logs, each naming its job, tenant and request."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from celery import Celery

from infra import servers
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

T = TypeVar("T")
QUEUES = ("submit", "finalize", "notify", "reconcile")
# What must never appear in a task's arguments, result or exception, whatever the job.
FORBIDDEN = ("token=", "X-Amz-Signature", "Signature=")


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]


@pytest.fixture(scope="module")
def flower(pipeline: Pipeline, tmp_workdir: Path) -> Iterator[Flower]:
    basic_auth = servers.flower_basic_auth()
    service = servers.start_flower(
        tmp_workdir / "flower-ops", pipeline.env, basic_auth=basic_auth,
        log_dir=tmp_workdir / "logs-flower-ops",
    )  # fmt: skip
    assert service.url is not None
    user, _, password = basic_auth.partition(":")
    try:
        yield Flower(service.url, (user, password))
    finally:
        service.stop()


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def service_log(stack: Pipeline, name: str) -> str:
    service = next(service for service in stack.services if service.name == name)
    return service.process.log_text()


def json_lines(text: str, allowed: tuple[str, ...] = ("--- start ",)) -> list[dict[str, Any]]:
    """Every line of a log as JSON; only the supervisor's own markers (and `allowed`) are not."""
    parsed, other = [], []
    for line in text.splitlines():
        if not line.strip() or line.startswith(allowed):
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            other.append(line)
    assert other == [], f"{len(other)} lines are not JSON, first: {other[:3]}"
    return parsed


def test_flower_shows_queues_readable_tasks_and_failed_jobs_without_secrets(
    stack: Pipeline, flower: Flower
) -> None:
    marker = uuid.uuid4().hex[:8]
    good_prompt = f"a lighthouse painted for flower {marker}"
    bad_prompt = f"a refused picture for flower {marker}"
    named_prompt = f"a job sent by name for flower {marker}"
    with httpx.Client(base_url=flower.url, auth=flower.auth, timeout=30) as client:
        poll(lambda: client.get("/api/workers").json(), 60, "Flower to see a worker")

        good = stack.submit({"positivePrompt": good_prompt, "resolution": "1K"})
        assert stack.wait(good["id"])["state"] == "succeeded"
        stack.emulator(item_error_rate=1.0, item_error_permanent_share=1.0)
        bad = stack.submit({"positivePrompt": bad_prompt, "resolution": "1K"})
        assert stack.wait(bad["id"])["state"] == "failed"
        stack.emulator(item_error_rate=0.0)
        producer = Celery("trusted-service", broker=stack.env["REDIS_URL"])
        request = {"positivePrompt": named_prompt, "resolution": "1K"}
        try:  # a trusted service enqueuing by name, without the pipeline's helper
            producer.send_task(
                "imagine.create_job", args=[request, "dev"],
                kwargs={"idempotency_key": f"flower-{marker}"}, queue="submit",
            )  # fmt: skip
        finally:
            producer.close()

        def settled() -> dict[str, dict[str, Any]] | None:
            tasks: dict[str, dict[str, Any]] = client.get("/api/tasks").json()
            failed = [
                t for t in tasks.values()
                if t["state"] == "FAILURE" and bad["id"] in (t.get("args") or "")
            ]  # fmt: skip
            by_name = [
                t for t in tasks.values()
                if t["name"] == "imagine.create_job" and t["state"] == "SUCCESS"
                and f"flower-{marker}" in (t.get("args") or "")
            ]  # fmt: skip
            return tasks if failed and by_name else None

        tasks = poll(settled, 60, "Flower to show the failed job and the job sent by name")
        broker_page = client.get("/broker")
        queue_lengths = client.get("/api/queues/length")

    # Every task has a readable name and names its job (and slot) by keyword. (A task that
    # was running when Flower started may lack the event that carries its name.)
    ours = [t for t in tasks.values() if good["id"] in (t.get("args") or "")]
    assert {t["name"] for t in ours} >= {"imagine.submit_job"}
    assert all(t["name"].startswith("imagine.") for t in tasks.values() if t["name"])
    submits = [t for t in tasks.values() if t["name"] == "imagine.submit_job"]
    assert any(t["args"] == f"job_id='{good['id']}'" for t in submits)
    finalizes = [t["args"] for t in tasks.values() if t["name"] == "imagine.finalize_slot"]
    assert all(args.startswith("job_id='") and ", slot=" in args for args in finalizes if args)
    # The failed job is a failed task: its id, its end and the provider's code.
    (failure,) = [
        t for t in tasks.values() if t["state"] == "FAILURE" and bad["id"] in (t["args"] or "")
    ]
    assert failure["name"] == "imagine.notify_job"
    exception = failure["exception"]
    assert "JobFailed" in exception and f"job {bad['id']} ended failed" in exception
    assert "providerContentPolicyViolation" in exception
    # The request of a job sent by name is withheld.
    (by_name,) = [t for t in tasks.values() if f"flower-{marker}" in (t.get("args") or "")]
    assert by_name["args"].startswith("request=<withheld>, tenant='dev'")
    # Beat sends the reconciler every second here: none of its passes is listed.
    assert [t for t in tasks.values() if t["name"] == "imagine.reconcile"] == []
    # No argument, result or exception carries a credential, a signature or a prompt.
    secrets = [
        stack.api_key,
        stack.env["RUNWARE_API_KEY"],
        *stack.env["WEBHOOK_SECRETS"].split(","),
        good_prompt,
        bad_prompt,
        named_prompt,
        *FORBIDDEN,
    ]
    for task in tasks.values():
        shown = " ".join(
            str(task.get(field) or "")
            for field in ("args", "kwargs", "result", "exception", "traceback")
        )
        leaks = [secret[:16] for secret in secrets if secret in shown]
        assert leaks == [], f"{task['name']} shows {leaks}"
    # The broker page and API list the pipeline's queues.
    assert broker_page.status_code == 200, broker_page.text[:300]
    assert all(queue in broker_page.text for queue in QUEUES)
    assert queue_lengths.status_code == 200, queue_lengths.text[:300]
    listed = {queue["name"] for queue in queue_lengths.json()["active_queues"]}
    assert set(QUEUES) <= listed


def test_worker_beat_and_receiver_logs_are_json_lines_naming_job_tenant_and_request(
    stack: Pipeline,
) -> None:
    request_id = f"e2e-logs-{uuid.uuid4().hex}"
    stack.emulator(put_order="after")  # the image is then stored by a worker task
    created = stack.submit(
        {"positivePrompt": "logged end to end", "resolution": "1K", "numberResults": 2},
        **{"X-Request-Id": request_id},
    )
    job_id = created["id"]
    assert stack.wait(job_id)["state"] == "succeeded"

    def worker_lines() -> list[dict[str, Any]] | None:
        # Celery prints its own shutdown notices ("worker: Warm shutdown") as text.
        lines = json_lines(service_log(stack, "worker-e2e"), ("--- start ", "worker: "))
        ours = [line for line in lines if line.get("job_id") == job_id]
        done = any(line.get("task") == "imagine.finalize_slot" for line in ours)
        return ours if done else None

    ours = poll(worker_lines, 30, "the worker's lines about the job")
    assert all(line.get("tenant") == "dev" for line in ours), ours[:3]
    submitted = [line for line in ours if line.get("task") == "imagine.submit_job"]
    assert submitted and all(line.get("request_id") == request_id for line in submitted)
    assert any("succeeded" in line["message"] for line in submitted)  # Celery's own outcome
    finalized = [line for line in ours if line.get("task") == "imagine.finalize_slot"]
    assert finalized and {line.get("slot") for line in finalized} <= {0, 1}
    assert all(line.get("task_uuid") for line in finalized), finalized[:3]

    assert any(line["message"] == "beat started" for line in json_lines(service_log(stack, "beat")))
    receiver = json_lines(service_log(stack, "receiver"))
    access = [line for line in receiver if line.get("logger") == "gunicorn.access"]
    created_line = [line for line in access if line.get("request_id") == request_id]
    assert [line["path"] for line in created_line] == ["/v1/jobs"]
    assert any(line.get("message") == "job created" and line.get("request_id") == request_id
               and line.get("tenant") == "dev" for line in receiver)  # fmt: skip
    webhooks = [line for line in access if line["path"].startswith("/webhooks/runware/")]
    assert webhooks and all("token" not in json.dumps(line) for line in webhooks)
