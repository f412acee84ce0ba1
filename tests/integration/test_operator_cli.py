"""The on-call's `imagine stats`, `jobs --state --since` and `status` against the real jobs API
(gunicorn) and Redis; no worker runs, so the test plays the worker's steps through the use
cases and delivers Runware's webhooks to the receiver over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from imagine_client import Client
from infra import servers, supervise
from pipeline import completion
from pipeline.config import Settings
from pipeline.models import AWAITING_RESULT, JOB_OPEN, JobState, SlotState
from pipeline.services import JobService
from pipeline.signing import webhook_token
from pipeline.storage import MemoryObjectStorage
from pipeline.store import RedisJobStore
from pipeline.wiring import build_service
from tests.conftest import RecordingDispatcher
from tests.integration.test_client import REQUEST, base_env, imagine

pytestmark = pytest.mark.integration

# A database of its own (see tests/integration/test_client.py for the others).
DATABASE = 9
TENANTS = ("counted", "listed", "retried")


@dataclass(frozen=True)
class Stack:
    url: str
    keys: dict[str, str]
    env: dict[str, str]
    service: JobService  # the use cases on the same Redis, standing in for a worker

    @property
    def store(self) -> RedisJobStore:
        store = self.service.store
        assert isinstance(store, RedisJobStore)
        return store

    def client(self, tenant: str) -> Client:
        return Client(self.url, self.keys[tenant])

    def tenant_env(self, tenant: str) -> dict[str, str]:
        return {**base_env(), "IMAGINE_API_URL": self.url, "IMAGINE_API_KEY": self.keys[tenant]}

    def redis_env(self) -> dict[str, str]:
        names = ("REDIS_", "S3_", "AWS_")
        return {**base_env(), **{k: v for k, v in self.env.items() if k.startswith(names)}}

    def fail_job(self, job_id: str, code: str = "taskFailed") -> None:
        """Every image of the job fails, and the job ends: what a worker would do."""
        job = self.service.get_job(job_id)
        for slot in job.slots:
            completion.fail_slot(self.service.context, job_id, slot.slot, None, code, "boom")
        assert self.service.finish_job(job_id)

    def submit_slot(self, job_id: str, slot: int, attempt: int) -> str:
        """Mint the slot's taskUUID and mark it accepted by Runware, as submission does."""
        task = self.store.mint_task_uuid(job_id, slot, attempt, str(uuid.uuid4()))
        assert task is not None
        assert self.store.transition_slot(
            job_id,
            slot,
            [SlotState.PENDING],
            SlotState.SUBMITTED,
            task_uuid=task,
            submitted_at=repr(time.time()),
        )
        return task

    def webhook(self, task: str, body: dict[str, object]) -> list[str]:
        token = webhook_token(self.env["WEBHOOK_SECRETS"].split(",")[0], task)
        url = f"{self.url}/webhooks/runware/{task}"
        answer = httpx.post(url, params={"token": token}, json=body)
        assert answer.status_code == 200, answer.text
        results: list[str] = answer.json()["results"]
        return results


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: str,
    s3_server: str,
    s3_bucket: str,
    emulator_service: supervise.Service,
    emulator_api_key: str,
) -> Iterator[Stack]:
    """The receiver serving the jobs API for three tenants; no worker runs."""
    workdir = tmp_path_factory.mktemp("operator-cli")
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{DATABASE}"
    redis.Redis.from_url(redis_url).flushdb()
    keys = {tenant: f"{tenant}-{uuid.uuid4().hex}" for tenant in TENANTS}
    port = supervise.free_port()
    env = servers.pipeline_env(
        redis_url,
        s3_server,
        s3_bucket,
        emulator_service.url,
        emulator_api_key,
        port,
        api_keys=",".join(f"{tenant}:{key}" for tenant, key in keys.items()),
        log_format="text",
    )
    settings = Settings.from_env(env)
    built = build_service(settings, dispatcher=RecordingDispatcher())
    # Manifests of the jobs ended here go to memory: what is checked is what Redis counts.
    service = JobService(replace(built.context, storage=MemoryObjectStorage(settings.s3_bucket)))
    receiver = servers.start_receiver(workdir, env, port, log_dir=workdir / "logs")
    assert receiver.url is not None
    yield Stack(receiver.url, keys, env, service)
    receiver.stop()


def today(stack: Stack, tenant: str) -> dict[str, object]:
    done = imagine("stats", "--days", "1", "--json", env=stack.tenant_env(tenant), cwd=Path("/"))
    assert done.returncode == 0, done.stderr
    [day] = json.loads(done.stdout)
    assert day["tenant"] == tenant and day["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    return dict(day)


def test_stats_count_each_end_once_however_often_it_is_replayed(stack: Stack) -> None:
    with stack.client("counted") as tenant:
        failing = tenant.submit({**REQUEST, "numberResults": 2})
        cancelled = tenant.submit(REQUEST)
        stored = tenant.submit(REQUEST)
    ctx = stack.service.context

    stack.fail_job(failing.id)
    # Every replay of the end: a second finisher, the end event again, a rewritten manifest,
    # the terminal transition itself.
    assert not stack.service.finish_job(failing.id)
    completion.write_final_manifest(ctx, failing.id)
    completion.rewrite_manifest(ctx, failing.id)
    assert not stack.store.transition_job(failing.id, JOB_OPEN, JobState.FAILED)
    with stack.client("counted") as tenant:
        tenant.cancel(cancelled.id)
        tenant.cancel(cancelled.id)  # a 409, answered with the cancelled job
    task = stack.submit_slot(stored.id, 0, 1)
    received = [SlotState.RECEIVED]
    for _ in range(2):  # the result and its replay: charged once, stored once
        store = stack.store
        store.transition_slot(
            stored.id, 0, AWAITING_RESULT, received[0], task_uuid=task, cost=0.0725
        )
        store.transition_slot(stored.id, 0, received, SlotState.STORED, task_uuid=task)
    assert stack.service.finish_job(stored.id)
    assert not stack.service.finish_job(stored.id)

    day = today(stack, "counted")
    assert (day["created"], day["imagesRequested"]) == (3, 4)
    ended = {"succeeded": 1, "partially_succeeded": 0, "failed": 1, "cancelled": 1, "timed_out": 0}
    assert day["ended"] == ended
    # Two images of the failed job, and the cancelled job's one.
    assert (day["imagesStored"], day["imagesFailed"]) == (1, 3)
    assert day["spendUsd"] == 0.0725
    # What the daily caps reserved as each job was made (estimates; a cancel gives none back).
    reserved = day["reserved"]
    assert isinstance(reserved, dict) and reserved["images"] == 4

    # The table a person reads; through Redis, every tenant counted today.
    shown = imagine("stats", "--days", "2", env=stack.tenant_env("counted"), cwd=Path("/"))
    assert shown.returncode == 0, shown.stderr
    print(shown.stderr + shown.stdout)
    header, row, *_ = shown.stdout.splitlines()
    assert header.split()[:3] == ["day", "tenant", "created"]
    assert row.split()[1:11] == ["counted", "3", "1", "0", "1", "1", "0", "1", "3", "$0.0725"]
    every = imagine("stats", "--direct", "--days", "1", env=stack.redis_env(), cwd=Path("/"))
    assert every.returncode == 0, every.stderr
    print(every.stderr + every.stdout)
    assert every.stderr.startswith("counters of every tenant counted, per UTC day")
    tenants = [line.split()[1] for line in every.stdout.splitlines()[1:]]
    assert "counted" in tenants


def test_jobs_lists_the_failed_ones_of_the_last_hour(stack: Stack) -> None:
    with stack.client("listed") as tenant:
        old, recent, queued = (tenant.submit(REQUEST).id for _ in range(3))
    stack.fail_job(old)
    stack.fail_job(recent, code="unsupportedDimensions")
    # `old` was made two hours ago: its record and its place in the tenant's index say so.
    two_hours_ago = time.time() - 7200
    stack.store.redis.hset(stack.store.job_key(old), "created_at", repr(two_hours_ago))
    stack.store.redis.zadd(stack.store.tenant_key("listed"), {old: two_hours_ago})
    env = stack.tenant_env("listed")

    hour = imagine("jobs", "--state", "failed", "--since", "1h", env=env, cwd=Path("/"))
    assert hour.returncode == 0, hour.stderr
    print(hour.stderr + hour.stdout)
    assert [line.split()[0] for line in hour.stdout.splitlines()] == [recent]
    assert hour.stderr == (
        "jobs of tenant listed (the API key's) in state failed created since 1h, newest first\n"
    )
    longer = imagine("jobs", "--state", "failed", "--since", "3h", "--json", env=env, cwd=Path("/"))
    assert [job["id"] for job in json.loads(longer.stdout)] == [recent, old]
    every = imagine("jobs", "--since", "30m", env=env, cwd=Path("/"))
    assert {line.split()[0] for line in every.stdout.splitlines()} == {recent, queued}

    refused = imagine("jobs", "--since", "soon", env=env, cwd=Path("/"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("imagine: validation_failed:")
    assert list(json.loads(refused.stdout)) == ["since"]

    # Through Redis, the same window, parsed by the command itself.
    operator = stack.redis_env()
    window = ("--tenant", "listed", "--state", "failed", "--since", "1h")
    direct = imagine("jobs", *window, env=operator, cwd=Path("/"))
    assert direct.returncode == 0, direct.stderr
    assert [line.split()[0] for line in direct.stdout.splitlines()] == [recent]
    bad = imagine("jobs", "--tenant", "listed", "--since", "soon", env=operator, cwd=Path("/"))
    assert bad.returncode == 2 and "--since 'soon' is neither a duration" in bad.stderr


def test_status_shows_a_slot_retried_once_with_each_attempts_task_and_code(stack: Stack) -> None:
    with stack.client("retried") as tenant:
        job = tenant.submit(REQUEST)
    first = stack.submit_slot(job.id, 0, 1)
    # Runware fails the first task: the receiver gives the image a new attempt.
    failure = {"taskType": "imageInference", "code": "taskFailed", "message": "GPU lost"}
    assert stack.webhook(first, {"errors": [{**failure, "taskUUID": first}]}) == ["retrying"]
    second = stack.submit_slot(job.id, 0, 2)
    assert second != first
    # The second fails for good.
    refusal = {"taskType": "imageInference", "code": "unsupportedDimensions", "taskUUID": second}
    assert stack.webhook(second, {"errors": [refusal]}) == ["failed"]
    stack.service.finish_job(job.id)  # unless the receiver ended it already

    env = stack.tenant_env("retried")
    shown = imagine("status", job.id, env=env, cwd=Path("/"))
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"job {job.id}  failed after ")
    header = lines.index(next(line for line in lines if line.startswith("slot")))
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[:5] for row in rows] == [
        ["0", "1", "failed", "taskFailed", first],
        ["0", "2", "failed", "unsupportedDimensions", second],
    ]
    # Each attempt was submitted, and ended, after the job was created.
    assert all(row[6].startswith("+") and row[8].startswith("+") for row in rows)

    view = json.loads(imagine("status", job.id, "--json", env=env, cwd=Path("/")).stdout)
    [slot] = view["slots"]
    assert (slot["attempt"], slot["taskUUID"], slot["previousTaskUUIDs"]) == (2, second, [first])
    [retired] = slot["history"]
    assert (retired["attempt"], retired["taskUUID"], retired["code"]) == (1, first, "taskFailed")
    assert retired["message"] == "GPU lost"
    submitted, ended = (
        datetime.fromisoformat(retired[name]) for name in ("submittedAt", "endedAt")
    )
    assert submitted <= ended
