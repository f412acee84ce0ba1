"""What only S3ObjectStorage does, against moto's S3 server: presigned PUTs, settings, paging,
the bucket check. The cases every storage shares are in test_storage_conformance.py."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from infra import servers
from pipeline.config import Settings
from pipeline.errors import StorageError
from pipeline.storage import KeyLayout, S3ObjectStorage

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def storage_from_env(env: dict[str, str]) -> Iterator[S3ObjectStorage]:
    """Storage built the way the services build it, from settings; its client closed after."""
    storage = S3ObjectStorage.from_settings(Settings.from_env(env), timeout=10)
    try:
        yield storage
    finally:
        storage._s3.close()


@pytest.fixture
def storage(s3_server: str, s3_bucket: str) -> Iterator[S3ObjectStorage]:
    with storage_from_env({"S3_ENDPOINT_URL": s3_server, "S3_BUCKET": s3_bucket}) as storage:
        yield storage


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: the bucket is shared by the session."""
    return f"t-{uuid.uuid4().hex}/"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def get_object(s3_client: Any, bucket: str, key: str) -> tuple[bytes, dict[str, Any]]:
    answer = s3_client.get_object(Bucket=bucket, Key=key)
    body = answer["Body"]
    data: bytes = body.read()
    body.close()
    return data, answer


@pytest.mark.parametrize("content_type", ["image/png", None])
def test_a_presigned_put_lands_the_object_with_or_without_a_content_type(
    storage: S3ObjectStorage,
    http: httpx.Client,
    s3_client: Any,
    s3_bucket: str,
    prefix: str,
    content_type: str | None,
) -> None:
    key = f"{prefix}staging/job/task"
    image = png_bytes()
    url = storage.presign_put(key, expires_in=600)

    # Only the host is signed, so whatever Content-Type the uploader sends is accepted.
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-SignedHeaders"] == ["host"]
    assert query["X-Amz-Expires"] == ["600"]

    headers = {"Content-Type": content_type} if content_type else {}
    response = http.put(url, content=image, headers=headers)

    assert response.status_code == 200, response.text
    assert response.request.headers.get("content-type") == content_type
    data, answer = get_object(s3_client, s3_bucket, key)
    assert data == image
    if content_type:
        assert answer["ContentType"] == content_type
    head = storage.head(key)
    assert head is not None
    assert head.size == len(image)
    assert head.etag == response.headers["etag"]


def test_a_storage_from_a_plain_client_sees_the_same_objects(
    s3_server: str, s3_bucket: str, storage: S3ObjectStorage, prefix: str
) -> None:
    with closing(servers.local_s3_client(s3_server)) as client:
        plain = S3ObjectStorage(client, s3_bucket)
        written = plain.put(f"{prefix}a.png", png_bytes(), content_type="image/png")
        plain.check()

    head = storage.head(f"{prefix}a.png")

    assert head is not None
    assert (head.size, head.etag, head.content_type) == (written.size, written.etag, "image/png")


def test_list_keys_pages_past_a_thousand_objects(
    storage: S3ObjectStorage, s3_client: Any, s3_bucket: str, prefix: str
) -> None:
    keys = [f"{prefix}many/{n:05d}" for n in range(1005)]
    for key in keys:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    assert sorted(storage.list_keys(f"{prefix}many/")) == keys


def test_key_layout_round_trips_through_the_bucket(
    s3_server: str, s3_bucket: str, prefix: str
) -> None:
    env = {"S3_ENDPOINT_URL": s3_server, "S3_BUCKET": s3_bucket, "S3_PREFIX": prefix}
    layout = KeyLayout(Settings.from_env(env).s3_prefix)
    job_id, task_uuid = str(uuid.uuid4()), str(uuid.uuid4())

    assert layout.staging(job_id, task_uuid) == f"{prefix}staging/{job_id}/{task_uuid}"
    assert layout.final(job_id, 3, "PNG") == f"{prefix}jobs/{job_id}/03.png"
    assert layout.final(job_id, 12, "JPG") == f"{prefix}jobs/{job_id}/12.jpg"
    assert layout.final(job_id, 0, "WEBP") == f"{prefix}jobs/{job_id}/00.webp"
    assert layout.manifest(job_id) == f"{prefix}jobs/{job_id}/manifest.json"

    written = {
        layout.staging(job_id, task_uuid): b"staged",
        layout.final(job_id, 0, "JPG"): b"final-0",
        layout.final(job_id, 1, "JPG"): b"final-1",
        layout.manifest(job_id): b"{}",
    }
    with storage_from_env(env) as storage:
        for key, data in written.items():
            storage.put(key, data, content_type="application/octet-stream")

        assert sorted(storage.list_keys(layout.job_prefix(job_id))) == sorted(
            [
                layout.final(job_id, 0, "JPG"),
                layout.final(job_id, 1, "JPG"),
                layout.manifest(job_id),
            ]
        )
        for key, data in written.items():
            assert storage.read(key, max_bytes=100) == data


def test_check_fails_for_a_missing_bucket(s3_server: str) -> None:
    env = {"S3_ENDPOINT_URL": s3_server, "S3_BUCKET": f"missing-{uuid.uuid4().hex[:12]}"}
    with storage_from_env(env) as storage, pytest.raises(StorageError) as raised:
        storage.check()

    assert not raised.value.transient
