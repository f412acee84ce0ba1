"""examples/consumer.py against the session's S3 server, on manifests and images the use cases
wrote there: each (jobId, manifestVersion) is handled once however often it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from infra import servers, supervise
from pipeline.storage import S3ObjectStorage
from tests.integration.conftest import UseCases, error_item, image_item, jpeg_bytes

pytestmark = pytest.mark.integration

CONSUMER = supervise.REPO_ROOT / "examples" / "consumer.py"


def own_prefix() -> pytest.MarkDecorator:
    """The session's S3 bucket, under a prefix of the test's own (the consumer lists it all)."""
    settings = {"S3_BUCKET": "imagine-test", "S3_PREFIX": f"consumer-{uuid.uuid4().hex[:12]}/"}
    return pytest.mark.parametrize("use_case_settings", [settings], indirect=True, ids=["s3"])


@pytest.fixture
def uc(use_cases: UseCases, s3_server: str, s3_bucket: str) -> UseCases:
    """The use cases writing to the S3 server instead of memory."""
    storage = S3ObjectStorage(servers.local_s3_client(s3_server), s3_bucket)
    use_cases.service.context.storage = storage
    use_cases.storage = storage  # type: ignore[assignment]
    return use_cases


@pytest.fixture
def consume(uc: UseCases, s3_server: str, s3_bucket: str, tmp_path: Path) -> Any:
    prefix = uc.settings.s3_prefix

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, str(CONSUMER), "--bucket", s3_bucket, "--prefix", prefix,
            "--endpoint-url", s3_server, "--region", servers.LOCAL_REGION,
            "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state.json"), *extra,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    return run


def stored_job(uc: UseCases, images: int = 2) -> str:
    job_id, tasks = uc.submitted(numberResults=images)
    for n, task_uuid in enumerate(tasks):
        uc.upload(task_uuid, jpeg_bytes(1024, 1024 - n))  # each image its own bytes
        uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=0.07)]})
        assert uc.service.promote_slot(job_id, n) == "stored"
    return job_id


def image_bytes(uc: UseCases, key: str) -> bytes:
    return uc.storage.read(key, max_bytes=10 << 20)


def state(tmp_path: Path) -> dict[str, int]:
    jobs = json.loads((tmp_path / "state.json").read_text())["jobs"]
    return {job_id: entry["version"] for job_id, entry in jobs.items()}


@own_prefix()
def test_each_finished_job_is_handled_once_and_again_only_for_a_higher_version(
    uc: UseCases, consume: Any, tmp_path: Path
) -> None:
    succeeded = stored_job(uc)
    partial, (kept, refused) = uc.submitted(numberResults=2)
    uc.upload(kept, jpeg_bytes())
    uc.webhook(kept, {"data": [image_item(kept)]})
    assert uc.service.promote_slot(partial, 0) == "stored"
    uc.webhook(refused, {"errors": [error_item(refused, "providerContentPolicyViolation")]})
    cancelled, [late] = uc.submitted()
    uc.service.cancel_job(cancelled, "acme")

    first = consume()

    assert first.returncode == 0, first.stderr
    assert "handled 3 job(s), 0 failed" in first.stdout
    assert state(tmp_path) == {succeeded: 1, partial: 1, cancelled: 1}
    for job_id in (succeeded, partial, cancelled):
        manifest = uc.manifest(job_id)
        folder = tmp_path / "out" / job_id
        assert json.loads((folder / "manifest.json").read_text()) == manifest
        stored = [slot for slot in manifest["slots"] if slot["state"] == "stored"]
        assert sorted(path.name for path in folder.iterdir()) == sorted(
            ["manifest.json", *(slot["finalKey"].rsplit("/", 1)[1] for slot in stored)]
        )
        for slot in stored:
            name = slot["finalKey"].rsplit("/", 1)[1]
            assert (folder / name).read_bytes() == image_bytes(uc, slot["finalKey"])

    again = consume()

    assert again.returncode == 0, again.stderr
    assert "handled 0 job(s), 0 failed" in again.stdout

    # A late, charged result of the cancelled job: its manifest is rewritten as version 2.
    assert uc.webhook(late, {"data": [image_item(late, cost=0.07)]}) == ["discarded"]
    assert uc.manifest(cancelled)["manifestVersion"] == 2

    third = consume()

    assert third.returncode == 0, third.stderr
    assert f"{cancelled} v2 cancelled: 0 of 1 images" in third.stdout
    assert "handled 1 job(s), 0 failed" in third.stdout
    assert state(tmp_path) == {succeeded: 1, partial: 1, cancelled: 2}
    assert "handled 0 job(s)" in consume().stdout


@own_prefix()
def test_an_image_unlike_its_manifest_is_not_handled_until_it_matches(
    uc: UseCases, consume: Any, tmp_path: Path, s3_client: Any, s3_bucket: str
) -> None:
    job_id = stored_job(uc, images=1)
    key = uc.manifest(job_id)["slots"][0]["finalKey"]
    original = image_bytes(uc, key)
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=original[:-100])

    refused = consume()

    assert refused.returncode == 1
    assert f"not handled: {job_id}" in refused.stderr
    assert not (tmp_path / "state.json").exists()

    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=original)  # the same bytes, same ETag

    accepted = consume()

    assert accepted.returncode == 0, accepted.stderr
    assert state(tmp_path) == {job_id: 1}
    assert (tmp_path / "out" / job_id / key.rsplit("/", 1)[1]).read_bytes() == original


@own_prefix()
def test_a_notification_hands_over_the_manifests_it_names(
    uc: UseCases, consume: Any, tmp_path: Path
) -> None:
    named, other = stored_job(uc, images=1), stored_job(uc, images=1)
    prefix = uc.settings.s3_prefix
    records = [f"{prefix}jobs/{named}/manifest.json", f"{prefix}jobs/{other}/00.jpg"]
    notification = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": quote_plus(key)}}}
            for key in records
        ]
    }
    path = tmp_path / "notification.json"
    path.write_text(json.dumps(notification))

    notified = consume("--notification", str(path))

    assert notified.returncode == 0, notified.stderr
    assert state(tmp_path) == {named: 1}
    assert consume("--notification", str(path)).stdout.endswith("handled 0 job(s), 0 failed\n")

    listed = consume()

    assert "handled 1 job(s), 0 failed" in listed.stdout
    assert state(tmp_path) == {named: 1, other: 1}
