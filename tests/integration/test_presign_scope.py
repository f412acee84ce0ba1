"""The presigned upload URL against an S3 server that checks SigV4: one key, PUT only, expiring."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from pipeline.config import Settings
from pipeline.storage import KeyLayout, S3ObjectStorage
from tests.integration.conftest import S3RVER_KEY, s3rver_client

pytestmark = pytest.mark.integration

JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
TASK = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
OTHER_TASK = "0b8e2d4f-6a1c-4f3e-9d5b-7c9e1f3a5b7d"
LAYOUT = KeyLayout("images/")
KEY = LAYOUT.staging(JOB, TASK)
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def storage_with(
    endpoint: str, bucket: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> S3ObjectStorage:
    # boto3's default session keeps the credentials it resolved first; start one afresh.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3RVER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    settings = Settings.from_env(
        {"S3_ENDPOINT_URL": endpoint, "S3_BUCKET": bucket, "S3_PREFIX": LAYOUT.prefix}
    )
    return S3ObjectStorage.from_settings(settings, timeout=10, attempts=1)


@pytest.fixture
def bucket(s3rver_bucket: tuple[str, str]) -> str:
    return s3rver_bucket[1]


@pytest.fixture
def admin(s3rver_bucket: tuple[str, str]) -> Any:
    """A client outside the code under test, to seed and inspect the bucket."""
    return s3rver_client(s3rver_bucket[0])


@pytest.fixture
def storage(s3rver_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> S3ObjectStorage:
    """The product's own storage adapter, built from settings as the workers build it."""
    endpoint, bucket = s3rver_bucket
    return storage_with(endpoint, bucket, S3RVER_KEY, monkeypatch)


def contents(admin: Any, bucket: str) -> dict[str, bytes]:
    listed = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        item["Key"]: admin.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }


def error_code(response: httpx.Response) -> str | None:
    found = re.search(r"<Code>([^<]+)</Code>", response.text)
    return found.group(1) if found else None


def moved(url: str, key: str) -> str:
    """The same signed query on another path."""
    parts = urlsplit(url)
    bucket = parts.path.split("/")[1]
    return parts._replace(path=f"/{bucket}/{key}").geturl()


def test_a_put_to_its_own_key_stores_the_bytes(
    storage: S3ObjectStorage, admin: Any, bucket: str
) -> None:
    response = httpx.put(storage.presign_put(KEY, 900), content=IMAGE)
    assert response.status_code == 200, response.text
    assert contents(admin, bucket) == {KEY: IMAGE}


def test_the_server_checks_signatures(
    s3rver_bucket: tuple[str, str], admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without this the refusals below would prove nothing about the URL."""
    endpoint, bucket = s3rver_bucket
    wrong_secret = storage_with(endpoint, bucket, "not-the-secret", monkeypatch)
    response = httpx.put(wrong_secret.presign_put(KEY, 900), content=IMAGE)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"
    good = storage_with(endpoint, bucket, S3RVER_KEY, monkeypatch).presign_put(KEY, 900)
    signature = parse_qs(urlsplit(good).query)["X-Amz-Signature"][0]
    forged = good.replace(signature, signature[::-1])
    response = httpx.put(forged, content=IMAGE)
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"
    assert contents(admin, bucket) == {}


@pytest.mark.parametrize(
    "other",
    [
        LAYOUT.staging(JOB, OTHER_TASK),  # another task's staging key
        LAYOUT.final(JOB, 0, "PNG"),  # a final image, written only by the pipeline
        LAYOUT.manifest(JOB),  # the manifest consumers trigger on
        f"{KEY}/x",  # below the key
        KEY.removeprefix(LAYOUT.prefix),  # outside the configured prefix
    ],
)
def test_the_url_writes_no_other_key(
    storage: S3ObjectStorage, admin: Any, bucket: str, other: str
) -> None:
    response = httpx.put(moved(storage.presign_put(KEY, 900), other), content=b"not yours")
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"
    assert contents(admin, bucket) == {}


def test_the_url_writes_nothing_in_another_bucket(
    storage: S3ObjectStorage, admin: Any, bucket: str
) -> None:
    other_bucket = f"{bucket}-other"
    admin.create_bucket(Bucket=other_bucket)
    url = storage.presign_put(KEY, 900)
    parts = urlsplit(url)
    response = httpx.put(
        parts._replace(path=f"/{other_bucket}/{KEY}").geturl(), content=b"not yours"
    )
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"
    assert contents(admin, other_bucket) == {}
    assert contents(admin, bucket) == {}


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "POST"])
def test_the_put_url_neither_reads_nor_deletes(
    storage: S3ObjectStorage, admin: Any, bucket: str, method: str
) -> None:
    admin.put_object(Bucket=bucket, Key=KEY, Body=IMAGE)
    response = httpx.request(method, storage.presign_put(KEY, 900))
    assert response.status_code == 403
    assert IMAGE not in response.content
    if method != "HEAD":  # a HEAD answer has no body to carry the code
        assert error_code(response) == "SignatureDoesNotMatch"
    assert contents(admin, bucket) == {KEY: IMAGE}


def test_a_put_after_expiry_is_refused(storage: S3ObjectStorage, admin: Any, bucket: str) -> None:
    # X-Amz-Date has whole seconds, so 2 s leaves at least one for the first PUT.
    url = storage.presign_put(KEY, 2)
    response = httpx.put(url, content=IMAGE)
    assert response.status_code == 200, response.text
    admin.delete_object(Bucket=bucket, Key=KEY)
    params = parse_qs(urlsplit(url).query)
    signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    expires_at = signed_at + int(params["X-Amz-Expires"][0])
    while time.time() <= expires_at + 0.05:  # the clock has to pass the expiry, nothing else
        time.sleep(expires_at + 0.1 - time.time())
    response = httpx.put(url, content=IMAGE)
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert "expired" in response.text
    assert contents(admin, bucket) == {}


@pytest.mark.parametrize(
    "content_type", [None, "image/jpeg", "image/png", "image/webp", "application/octet-stream"]
)
def test_any_content_type_is_accepted(
    storage: S3ObjectStorage, admin: Any, bucket: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.put(storage.presign_put(KEY, 900), content=IMAGE, headers=headers)
    assert response.status_code == 200, response.text
    assert contents(admin, bucket) == {KEY: IMAGE}
