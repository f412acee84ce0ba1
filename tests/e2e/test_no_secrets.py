"""No configured secret, token or presigned signature in a log, a Flower page or `inspect`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from infra import servers, supervise
from pipeline.signing import webhook_token
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

SIGNATURE = re.compile(r"X-Amz-Signature=[0-9a-fA-F]{64}")


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]
    service: supervise.Service


@pytest.fixture(scope="module")
def flower(pipeline: Pipeline, tmp_workdir: Path) -> Iterator[Flower]:
    basic_auth = servers.flower_basic_auth()
    service = servers.start_flower(
        tmp_workdir / "flower", pipeline.env, basic_auth=basic_auth, log_dir=tmp_workdir / "logs"
    )
    assert service.url is not None
    user, _, password = basic_auth.partition(":")
    try:
        yield Flower(service.url, (user, password), service)
    finally:
        service.stop()


def _poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _configured_secrets(
    env: dict[str, str], flower_password: str, task_uuids: list[str]
) -> dict[str, str]:
    """Every secret the pipeline was given or derived, by a name for the failure message."""
    found = {"RUNWARE_API_KEY": env["RUNWARE_API_KEY"], "CALLBACK_SECRET": env["CALLBACK_SECRET"],
             "Flower password": flower_password}  # fmt: skip
    webhook_secrets = [secret.strip() for secret in env["WEBHOOK_SECRETS"].split(",")]
    for index, secret in enumerate(webhook_secrets):
        found[f"WEBHOOK_SECRETS[{index}]"] = secret
        for task_uuid in task_uuids:
            found[f"webhook token of {task_uuid} under secret {index}"] = webhook_token(
                secret, task_uuid
            )
    for pair in env["API_KEYS"].split(","):
        tenant, _, key = pair.strip().partition(":")
        found[f"API key of {tenant}"] = key
    redis_password = urlsplit(env["REDIS_URL"]).password
    if redis_password:
        found["Redis password"] = redis_password
    assert all(found.values()), [name for name, value in found.items() if not value]
    return found


def _inspect(env: dict[str, str], command: str, node: str) -> str:
    argv = [supervise.venv_bin("celery"), "-A", "workers.worker", "inspect", command, "-j",
            "-d", node, "--timeout", "5"]  # fmt: skip
    result = subprocess.run(argv, env=env, cwd=supervise.REPO_ROOT, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_no_secret_in_logs_flower_or_inspect(
    stack: Pipeline, flower: Flower, tmp_workdir: Path, callback_url: str
) -> None:
    with httpx.Client(base_url=flower.url, auth=flower.auth, timeout=30) as client:
        workers = _poll(lambda: client.get("/api/workers").json(), 60, "Flower to see a worker")
        (node,) = [name for name in workers if name.startswith("e2e@")]

        stack.emulator(put_order="after")
        created = stack.submit(
            {
                "positivePrompt": "keep it secret",
                "resolution": "1K",
                "numberResults": 2,
                "callbackURL": callback_url,
            }
        )
        job = stack.wait(created["id"])
        assert job["state"] == "succeeded", job
        job_id = job["id"]
        task_uuids = [slot["taskUUID"] for slot in job["slots"]]
        assert len(task_uuids) == 2 and all(task_uuids)

        def tasks_of_the_job() -> dict[str, Any]:
            tasks: dict[str, Any] = client.get("/api/tasks").json()
            ended = {uuid: task for uuid, task in tasks.items()
                     if job_id in json.dumps(task) and task.get("state") == "SUCCESS"}  # fmt: skip
            names = {task["name"] for task in ended.values()}
            return ended if {"imagine.submit_job", "imagine.notify_job"} <= names else {}

        ran = _poll(tasks_of_the_job, 60, "Flower to show the job's tasks")
        pages: dict[str, str] = {}
        paths = [
            "/",
            "/workers",
            f"/worker/{node}",
            "/tasks",
            "/api/tasks",
            "/api/workers",
            "/broker",
            "/tasks/datatable?draw=1&start=0&length=500&search%5Bvalue%5D="
            "&order%5B0%5D%5Bcolumn%5D=0&columns%5B0%5D%5Bdata%5D=received",
        ]
        paths += [f"/task/{uuid}" for uuid in ran] + [f"/api/task/info/{uuid}" for uuid in ran]
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            pages[path] = response.text
            anonymous = httpx.get(flower.url + path, timeout=30)
            assert anonymous.status_code == 401, (path, anonymous.status_code)
            wrong = httpx.get(
                flower.url + path, auth=(flower.auth[0], "not-the-password"), timeout=30
            )
            assert wrong.status_code == 401, (path, wrong.status_code)

    # What was collected is what an operator sees: the worker, its queues, the job's tasks.
    worker_page = pages[f"/worker/{node}"]
    assert node in worker_page
    assert all(queue in worker_page for queue in ("submit", "finalize", "notify", "reconcile"))
    assert "workers.worker" in worker_page or "imagine.submit_job" in worker_page
    assert all(uuid in pages["/api/tasks"] for uuid in ran)
    assert job_id in "".join(pages[f"/task/{uuid}"] for uuid in ran)

    inspected = {
        command: _inspect(stack.env, command, node) for command in ("conf", "registered", "stats")
    }
    assert "task_acks_late" in inspected["conf"] and "broker_url" in inspected["conf"]
    assert "imagine.submit_job" in inspected["registered"]
    assert node in inspected["stats"] and "pool" in inspected["stats"]

    logs = {path.name: path.read_text(encoding="utf-8", errors="replace")
            for path in sorted((tmp_workdir / "logs").glob("*.log"))}  # fmt: skip
    assert {"receiver.log", "worker-e2e.log", "beat.log", "flower.log"} <= set(logs)
    assert job_id in logs["receiver.log"]
    assert all(uuid in logs["worker-e2e.log"] for uuid in ran)  # the worker logged the job's tasks
    assert "imagine.reconcile" in logs["beat.log"]

    collected = {
        **{f"log {name}": text for name, text in logs.items()},
        **{f"Flower {path}": text for path, text in pages.items()},
        **{f"inspect {command}": text for command, text in inspected.items()},
    }
    sizes = {source: len(text.encode()) for source, text in collected.items()}
    print(f"collected {sum(sizes.values())} bytes: {json.dumps(sizes)}")
    secrets = _configured_secrets(stack.env, flower.auth[1], task_uuids)
    leaks = [f"{name} in {source}" for source, text in collected.items()
             for name, secret in secrets.items() if secret in text]  # fmt: skip
    leaks += [f"a presigned signature in {source}" for source, text in collected.items()
              if SIGNATURE.search(text)]  # fmt: skip
    assert not leaks, leaks
