"""Fixtures of the end-to-end suite: the receiver, a Celery worker and beat as real processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import servers, supervise

CALLBACK_SECRET = "callback-secret-for-the-e2e-suite"
TERMINAL = {"succeeded", "partially_succeeded", "failed", "cancelled", "timed_out"}


@dataclass
class Pipeline:
    """The running pipeline and how to talk to it."""

    env: dict[str, str]
    receiver_url: str
    emulator_url: str
    api_key: str
    bucket: str
    services: list[supervise.Service]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.receiver_url, timeout=15,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def emulator(self, **switches: Any) -> None:
        response = httpx.patch(f"{self.emulator_url}/_emulator/config", json=switches, timeout=10)
        response.raise_for_status()

    def submit(self, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code in (200, 202), response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(self, job_id: str, timeout: float = 90.0,
             until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        done = until or (lambda job: job["state"] in TERMINAL)
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                if done(job):
                    return job
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} still {job['state']}: {job}")
                time.sleep(0.1)


@pytest.fixture(scope="session")
def pipeline(tmp_workdir: Path, redis_server: str, s3_server: str, s3_bucket: str,
             emulator_service: supervise.Service, emulator_api_key: str) -> Iterator[Pipeline]:
    assert emulator_service.url is not None
    receiver_port = supervise.free_port()
    env = servers.pipeline_env(
        redis_server, s3_server, s3_bucket, emulator_service.url, emulator_api_key,
        receiver_port, reconcile_interval_seconds=1, reconcile_grace_seconds=3,
        extra={"UPLOAD_WAIT_SECONDS": "2", "FINALIZE_RETRY_SECONDS": "1",
               "CIRCUIT_PROBE_SECONDS": "2", "CALLBACK_SECRET": CALLBACK_SECRET},
    )
    logs = tmp_workdir / "logs"
    started: list[supervise.Service] = []
    try:
        started.append(servers.start_receiver(tmp_workdir / "receiver", env, receiver_port,
                                                log_dir=logs))
        started.append(servers.start_worker(tmp_workdir / "worker", env, name="e2e",
                                              concurrency=2, log_dir=logs))
        started.append(servers.start_beat(tmp_workdir / "beat", env, log_dir=logs))
        yield Pipeline(env=env, receiver_url=f"http://127.0.0.1:{receiver_port}",
                       emulator_url=emulator_service.url,
                       api_key=servers.api_key_for(env), bucket=s3_bucket, services=started)
    finally:
        supervise.stop_all(reversed(started))


@pytest.fixture
def stack(pipeline: Pipeline, emulator: str) -> Pipeline:
    """The pipeline with the emulator reset to its defaults for this test."""
    return pipeline
