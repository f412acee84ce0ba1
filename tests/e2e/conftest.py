"""End-to-end fixtures and helpers: receiver, worker and beat started by the local stack's code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from infra import supervise
from infra.stack import LocalStack, StackConfig
from pipeline.models import JOB_TERMINAL

# A Standard Webhooks secret: whsec_ and the base64 of 32 bytes.
CALLBACK_SECRET = "whsec_Y2FsbGJhY2stc2VjcmV0LW9mLXRoZS1lMmUtc3VpdGU="
PIL_FORMAT = {"JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


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
        return httpx.Client(
            base_url=self.receiver_url,
            timeout=15,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )

    def emulator(self, **switches: Any) -> None:
        response = httpx.patch(f"{self.emulator_url}/_emulator/config", json=switches, timeout=10)
        response.raise_for_status()

    def submit(self, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code in (200, 202), response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(
        self,
        job_id: str,
        timeout: float = 90.0,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        done = until or (lambda job: job["state"] in JOB_TERMINAL)
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
def pipeline(
    tmp_workdir: Path,
    redis_server: str,
    s3_server: str,
    s3_bucket: str,
    emulator_service: supervise.Service,
    emulator_api_key: str,
) -> Iterator[Pipeline]:
    """Receiver, worker e2e@<host> and beat against the session's Redis, S3 and emulator."""
    config = StackConfig(
        workdir=tmp_workdir / "pipeline", log_dir=tmp_workdir / "logs", bucket=s3_bucket,
        redis_url=redis_server, s3_endpoint=s3_server, emulator_url=emulator_service.url,
        emulator_key=emulator_api_key, workers=("e2e",), concurrency=2, flower=False,
        reconcile_interval_seconds=1, reconcile_grace_seconds=3,
        extra_env={"UPLOAD_WAIT_SECONDS": "2", "FINALIZE_RETRY_SECONDS": "1",
                   "CIRCUIT_PROBE_SECONDS": "2", "CALLBACK_SECRET": CALLBACK_SECRET,
                   # One tenant polls and submits for the whole suite: counted, never refused.
                   "API_RATE_LIMIT": "100000/second"},
    )  # fmt: skip
    stack = LocalStack(config)
    try:
        stack.start()
        yield Pipeline(env=stack.env, receiver_url=stack.urls["RECEIVER_URL"],
                       emulator_url=stack.urls["EMULATOR_URL"], api_key=stack.api_key,
                       bucket=s3_bucket, services=list(stack.services.values()))  # fmt: skip
        check_manifests(s3_server, s3_bucket, stack.env.get("S3_PREFIX", ""))
    finally:
        stack.stop()


def check_manifests(endpoint: str, bucket: str, prefix: str) -> None:
    """Every manifest the suite's jobs wrote matches docs/manifest.schema.json."""
    # Imported here: only the suite's teardown needs them.
    from jsonschema import Draft202012Validator

    from infra.servers import local_s3_client

    schema = json.loads((supervise.REPO_ROOT / "docs" / "manifest.schema.json").read_text())
    validator = Draft202012Validator(schema)
    s3 = local_s3_client(endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}jobs/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    problems = []
    for key in (key for key in keys if key.endswith("/manifest.json")):
        document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        problems += [f"{key}: {error.message}" for error in validator.iter_errors(document)]
    assert problems == [], "manifests that do not match their schema:\n" + "\n".join(problems)


@pytest.fixture
def stack(pipeline: Pipeline, emulator: str) -> Pipeline:
    """The pipeline with the emulator reset to its defaults for this test."""
    return pipeline


def job_keys(s3_client: Any, bucket: str, job_id: str) -> list[str]:
    """Every key under the job's final prefix, sorted."""
    answer = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    return sorted(item["Key"] for item in answer.get("Contents", []))


def staging_keys(s3_client: Any, bucket: str, job_id: str) -> list[str]:
    """Every key under the job's staging prefix."""
    answer = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"staging/{job_id}/")
    return [item["Key"] for item in answer.get("Contents", [])]


def check_stored_job(
    s3_client: Any, stack: Pipeline, job: dict[str, Any], width: int, height: int, fmt: str
) -> dict[str, Any]:
    """Every slot has exactly one verified final object and the manifest lists them all."""
    assert job["state"] == "succeeded", job
    ext = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    expected = [f"jobs/{job['id']}/{n:02d}.{ext}" for n in range(job["numberResults"])]
    assert [slot["finalKey"] for slot in job["slots"]] == expected
    assert job_keys(s3_client, stack.bucket, job["id"]) == sorted(
        [*expected, f"jobs/{job['id']}/manifest.json"]
    )
    assert staging_keys(s3_client, stack.bucket, job["id"]) == []
    for slot in job["slots"]:
        obj = s3_client.get_object(Bucket=stack.bucket, Key=slot["finalKey"])
        image = Image.open(io.BytesIO(obj["Body"].read()))
        assert image.format == PIL_FORMAT[fmt]
        assert image.size == (width, height)
        assert obj["ContentType"] == Image.MIME[PIL_FORMAT[fmt]]
        assert obj["Metadata"]["imagine-job-id"] == job["id"]
        assert obj["Metadata"]["imagine-slot"] == str(slot["slot"])
        assert obj["Metadata"]["imagine-task-uuid"] == slot["taskUUID"]
        assert len(obj["Metadata"]["imagine-prompt-sha256"]) == 64
    manifest = json.loads(
        s3_client.get_object(Bucket=stack.bucket, Key=job["manifestKey"])["Body"].read()
    )
    assert manifest["state"] == "succeeded"
    assert [slot["finalKey"] for slot in manifest["slots"]] == expected
    assert all(slot["state"] == "stored" for slot in manifest["slots"])
    return manifest


def imagine(stack: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `imagine` command with the pipeline's settings."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=stack.env,
        cwd=supervise.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def metric(stack: Pipeline, name: str) -> float:
    """One series (`name` with its labels, if any) as Prometheus adds it up now: a counter
    summed over every process group that counts (the receiver and each worker), anything else
    as the receiver's /metrics shows it (the gauges read from Redis are the receiver's)."""
    if name.split("{", 1)[0].endswith("_total"):
        urls = [service.metrics_url for service in stack.services if service.metrics_url]
    else:
        urls = [f"{stack.receiver_url}/metrics"]
    values = [
        float(line.split()[-1])
        for url in urls
        for line in httpx.get(url, timeout=10).text.splitlines()
        if line.startswith(name + " ")
    ]
    if not values:
        raise AssertionError(f"no metric {name}")
    return sum(values)


@pytest.fixture
def callback_url() -> Iterator[str]:
    """A tenant's callback endpoint that accepts every callback (204), so the notify path runs."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join(5)
