"""The presigned upload URL: one staging key, PUT only, no Content-Type, expiring with the job."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from unittest.mock import MagicMock
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.models import Job, JobState, Slot, SlotState
from pipeline.storage import KeyLayout, S3ObjectStorage
from pipeline.submission import task_payload

pytestmark = pytest.mark.unit

JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
TASK = "9a3c1f0e-5b7d-4e21-8f6a-0c2d4e6f8a10"
OTHER_TASK = "0b8e2d4f-6a1c-4f3e-9d5b-7c9e1f3a5b7d"
ACCESS_KEY = "AKIDPRESIGNTEST"
SECRET_KEY = "presign-unit-test-secret"
BUCKET = "imagine-test"
ENDPOINT = "https://s3.example.test"
WEEK = 7 * 86400
SIGV4_PARAMS = {
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
}


@pytest.fixture(autouse=True)
def _known_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials this module knows, so it can recompute the signature itself."""
    # boto3's default session keeps the credentials it resolved first; start one afresh.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {
            "S3_BUCKET": BUCKET,
            "S3_PREFIX": "images/",
            "WEBHOOK_SECRETS": "webhook-secret-0123456789",
            "PUBLIC_BASE_URL": "https://hooks.example.com",
            **env,
        }
    )


def storage(endpoint: str | None = ENDPOINT) -> S3ObjectStorage:
    return S3ObjectStorage.from_settings(
        settings(**({"S3_ENDPOINT_URL": endpoint} if endpoint else {}))
    )


def query(url: str) -> dict[str, str]:
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    assert len(pairs) == len({name for name, _ in pairs}), "a query parameter is repeated"
    return dict(pairs)


def sigv4_signature(method: str, url: str, secret: str) -> str:
    """SigV4 of a presigned request, computed here from the AWS spec rather than by botocore."""
    parts = urlsplit(url)
    params = sorted(
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name != "X-Amz-Signature"
    )
    canonical_query = "&".join(
        f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in params
    )
    fields = dict(params)
    signed = fields["X-Amz-SignedHeaders"].split(";")
    headers = {"host": parts.netloc}
    canonical_request = "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            "".join(f"{name}:{headers[name]}\n" for name in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _, date, region, service, terminator = fields["X-Amz-Credential"].split("/")
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            fields["X-Amz-Date"],
            f"{date}/{region}/{service}/{terminator}",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# --- presign_put ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "host", "path_prefix"),
    [
        (ENDPOINT, "s3.example.test", f"/{BUCKET}/"),  # S3-compatible server: path style
        (None, f"{BUCKET}.s3.amazonaws.com", "/"),  # real S3: the bucket in the host
    ],
)
def test_a_presigned_put_names_exactly_its_staging_key(
    endpoint: str | None, host: str, path_prefix: str
) -> None:
    key = KeyLayout("images/").staging(JOB, TASK)
    url = storage(endpoint).presign_put(key, 900)
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert parts.netloc == host
    assert parts.path == f"{path_prefix}{key}"
    assert parts.fragment == ""
    params = query(url)
    # Nothing but SigV4's own parameters: no acl, no Content-Type, no response overrides.
    assert set(params) == SIGV4_PARAMS
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-SignedHeaders"] == "host"
    assert params["X-Amz-Expires"] == "900"
    access_key, _, region, service, terminator = params["X-Amz-Credential"].split("/")
    assert (access_key, region, service, terminator) == (
        ACCESS_KEY,
        "us-east-1",
        "s3",
        "aws4_request",
    )


def test_the_signature_covers_the_put_method_and_the_one_key() -> None:
    layout = KeyLayout("images/")
    key = layout.staging(JOB, TASK)
    url = storage().presign_put(key, 900)
    signature = query(url)["X-Amz-Signature"]
    assert sigv4_signature("PUT", url, SECRET_KEY) == signature
    for method in ("GET", "HEAD", "DELETE", "POST"):
        assert sigv4_signature(method, url, SECRET_KEY) != signature, method
    for other in (
        layout.staging(JOB, OTHER_TASK),
        layout.final(JOB, 0, "PNG"),
        layout.manifest(JOB),
        f"{key}/x",
        key.removeprefix("images/"),
    ):
        moved = url.replace(f"/{key}?", f"/{other}?")
        assert moved != url
        assert sigv4_signature("PUT", moved, SECRET_KEY) != signature, other


# --- the expiry task_payload asks for --------------------------------------------------------


def job_context(**env: str) -> Context:
    # The store, dispatcher, circuit and budget are never touched while a payload is built.
    return Context(
        settings=settings(S3_ENDPOINT_URL=ENDPOINT, **env),
        store=MagicMock(),
        storage=storage(),
        dispatcher=MagicMock(),
        circuit=MagicMock(),
        budget=MagicMock(),
        http=MagicMock(),
    )


def running_job(deadline_at: float) -> Job:
    now = time.time()
    return Job(
        id=JOB,
        tenant="acme",
        state=JobState.RUNNING,
        model="xai:grok-imagine@image-pro",
        params={
            "model": "xai:grok-imagine@image-pro",
            "positivePrompt": "a lighthouse",
            "width": 1280,
            "height": 896,
            "numberResults": 1,
            "outputFormat": "PNG",
        },
        slot_count=1,
        output_format="PNG",
        created_at=now,
        updated_at=now,
        deadline_at=deadline_at,
        slots=[Slot(job_id=JOB, slot=0, state=SlotState.SUBMITTED)],
    )


def upload_endpoint(svc: Context, job: Job) -> dict[str, str]:
    payload: dict[str, Any] = task_payload(svc, job, job.slots[0], TASK)
    url = payload["uploadEndpoint"]
    assert urlsplit(url).path == f"/{BUCKET}/{svc.layout.staging(JOB, TASK)}"
    return query(url)


# The half second keeps int(deadline - now) on the whole number for the length of a test.
@pytest.mark.parametrize(
    ("remaining", "margin", "expected"),
    [
        (900.5, "600", 1500),  # default deadline, default margin
        (86400.5, "600", 87000),  # the longest default deadline
        (900.5, "0", 900),
        (8 * 86400.5, "600", WEEK),  # capped at SigV4's longest expiry
        (900.5, str(WEEK), WEEK),
        (-30.0, "600", 60 + 600),  # at or past the deadline: a minute plus the margin
    ],
)
def test_the_upload_url_lives_until_the_deadline_plus_the_margin(
    remaining: float, margin: str, expected: int
) -> None:
    svc = job_context(UPLOAD_URL_MARGIN_SECONDS=margin)
    params = upload_endpoint(svc, running_job(time.time() + remaining))
    assert int(params["X-Amz-Expires"]) == expected
    assert int(params["X-Amz-Expires"]) <= WEEK
    assert params["X-Amz-SignedHeaders"] == "host"


def test_a_public_endpoint_names_the_host_runware_reaches_in_both_presigned_urls() -> None:
    public = "https://s3.public.example.test"
    store = S3ObjectStorage.from_settings(
        settings(S3_ENDPOINT_URL="http://minio:9000", S3_PUBLIC_ENDPOINT_URL=public)
    )
    key = f"staging/{JOB}/{TASK}.png"
    for method, url in (
        ("PUT", store.presign_put(key, 600)),
        ("GET", store.presign_get(key, 600)),
    ):
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == public, url
        assert parts.path == f"/{BUCKET}/{key}", url
        # Signed for the public host: S3 behind that name accepts it.
        assert sigv4_signature(method, url, SECRET_KEY) == query(url)["X-Amz-Signature"]
    # Reads and writes of the pipeline itself still go to the internal endpoint.
    assert store._s3.meta.endpoint_url == "http://minio:9000"


def test_without_a_public_endpoint_presigned_urls_name_the_s3_endpoint() -> None:
    url = storage("http://minio:9000").presign_put(f"staging/{JOB}/{TASK}.png", 600)
    assert urlsplit(url).netloc == "minio:9000"
