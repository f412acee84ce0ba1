"""Shared fixtures: real Redis, S3 and emulator processes on free ports, started on first use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infra import servers, supervise


class RecordingDispatcher:
    """A dispatcher that records each nudge instead of sending it to a worker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        self.sent.append(("submit", (job_id,)))

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        self.sent.append(("finalize", (job_id, slot)))

    def notify_job(self, job_id: str) -> None:
        self.sent.append(("notify", (job_id,)))

    def queue_lengths(self) -> dict[str, int]:
        return {}


LOCAL_KEY = servers.LOCAL_AWS_KEY
EMULATOR_API_KEY = "emulator-test-key"
TEST_BUCKET = "imagine-test"


@pytest.fixture(scope="session", autouse=True)
def _scrub_credentials() -> Iterator[None]:
    """No test may reach a real provider or real AWS: drop their credentials for the session."""
    patch = pytest.MonkeyPatch()
    patch.delenv("RUNWARE_API_KEY", raising=False)
    for name in [key for key in os.environ if key.startswith("AWS_")]:
        patch.delenv(name)
    patch.setenv("AWS_ACCESS_KEY_ID", LOCAL_KEY)
    patch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_KEY)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tmp_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the session's server data and logs."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_service(tmp_workdir: Path) -> Iterator[supervise.Service]:
    """A Redis server of its own (never the shared one on 6379)."""
    service = servers.start_redis(tmp_workdir / "redis", log_dir=tmp_workdir / "logs")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_server(redis_service: supervise.Service) -> str:
    """The URL of the session's Redis server."""
    assert redis_service.url is not None
    return redis_service.url


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    """The bucket created on the session's S3 server."""
    return TEST_BUCKET


@pytest.fixture(scope="session")
def s3_service(tmp_workdir: Path, s3_bucket: str) -> Iterator[supervise.Service]:
    """moto's S3 server with the test bucket."""
    service = servers.start_s3(tmp_workdir / "s3", log_dir=tmp_workdir / "logs")
    assert service.url is not None
    servers.create_bucket(service.url, s3_bucket)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3_server(s3_service: supervise.Service) -> str:
    """The endpoint URL of the session's S3 server (the test bucket exists)."""
    assert s3_service.url is not None
    return s3_service.url


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    """A boto3 S3 client of the session's S3 server."""
    return servers.local_s3_client(s3_server)


@pytest.fixture(scope="session")
def emulator_api_key() -> str:
    """The API key the session's emulator accepts."""
    return EMULATOR_API_KEY


@pytest.fixture(scope="session")
def emulator_service(tmp_workdir: Path, emulator_api_key: str) -> Iterator[supervise.Service]:
    """The Runware emulator, started once for the session."""
    service = servers.start_emulator(
        tmp_workdir / "emulator", api_key=emulator_api_key, log_dir=tmp_workdir / "logs"
    )
    yield service
    service.stop()


@pytest.fixture
def emulator(emulator_service: supervise.Service) -> str:
    """The emulator's base URL (API under /v1); state, ledger and switches reset for each test."""
    assert emulator_service.url is not None
    response = httpx.post(
        f"{emulator_service.url}/_emulator/reset", json={"config": True}, timeout=10
    )
    response.raise_for_status()
    return emulator_service.url
