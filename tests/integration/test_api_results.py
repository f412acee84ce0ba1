"""Results without S3 credentials: the job view's presigned URLs and the image route's redirect,
against an S3 server that checks SigV4 signatures (s3rver), downloaded with plain httpx."""

from __future__ import annotations

import calendar
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from flask.testing import FlaskClient
from openapi_schema_validator import OAS31Validator
from PIL import Image

from pipeline.config import Settings
from pipeline.storage import S3ObjectStorage
from tests.integration.conftest import (
    S3RVER_KEY,
    UseCases,
    image_item,
    s3rver_client,
)
from webhooks.app import create_app

pytestmark = pytest.mark.integration

ACME_KEY = "key-of-acme-results-0001"
GLOBEX_KEY = "key-of-globex-results-0001"
API_KEYS = {"API_KEYS": f"acme:{ACME_KEY},globex:{GLOBEX_KEY}"}
URLS_ON = pytest.mark.parametrize("use_case_settings", [API_KEYS], indirect=True)
URLS_OFF = pytest.mark.parametrize(
    "use_case_settings", [API_KEYS | {"RESULT_URL_SECONDS": "0"}], indirect=True
)
ERROR_KEYS = {"code", "status", "message", "errors"}


def jpeg(color: tuple[int, int, int]) -> bytes:
    """A real JPEG of the size the harness's jobs ask for."""
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), color).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@dataclass
class Api:
    """The jobs API over the use cases, their bucket on s3rver."""

    uc: UseCases
    client: FlaskClient
    s3: Any  # a client outside the code under test, to look into the bucket
    endpoint: str
    bucket: str

    def get(self, path: str, key: str = ACME_KEY) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {key}"})

    def stored_job(self, images: int = 1) -> tuple[str, list[bytes]]:
        """A job whose images Runware uploaded through their presigned PUT URLs and reported,
        each stored, the manifest written: (job id, the bytes of each image)."""
        job_id, tasks = self.uc.submitted(numberResults=images)
        uploaded = []
        for number, task_uuid in enumerate(tasks):
            image = jpeg(color=(30, 90 + 40 * number, 160))  # other bytes in each slot
            upload = self.uc.runware.submitted()[task_uuid]["uploadEndpoint"]
            assert httpx.put(upload, content=image).status_code == 200
            self.uc.webhook(task_uuid, {"data": [image_item(task_uuid)]})
            assert self.uc.service.promote_slot(job_id, number) == "stored"
            uploaded.append(image)
        return job_id, uploaded


@pytest.fixture
def s3rver_storage(
    s3rver_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3ObjectStorage]:
    """The product's adapter on s3rver, built from settings as every process builds it."""
    endpoint, bucket = s3rver_bucket
    # boto3's default session keeps the credentials it resolved first; start one afresh.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3RVER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3RVER_KEY)
    settings = Settings.from_env({"S3_ENDPOINT_URL": endpoint, "S3_BUCKET": bucket})
    storage = S3ObjectStorage.from_settings(settings, timeout=10, attempts=1)
    yield storage
    storage._s3.close()


@pytest.fixture
def api(
    use_cases: UseCases, s3rver_storage: S3ObjectStorage, s3rver_bucket: tuple[str, str]
) -> Api:
    endpoint, bucket = s3rver_bucket
    use_cases.service.context.storage = s3rver_storage
    app = create_app(
        use_cases.settings,
        service=use_cases.service,
        inline_service=use_cases.service,
        roles=("api",),
    )
    return Api(use_cases, app.test_client(), s3rver_client(endpoint), endpoint, bucket)


def expiry_of(url: str) -> float:
    params = parse_qs(urlsplit(url).query)
    signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return signed_at + int(params["X-Amz-Expires"][0])


def parse_iso(text: str) -> float:
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


@URLS_ON
def test_stored_images_and_the_manifest_download_through_the_job_views_urls(api: Api) -> None:
    job_id, images = api.stored_job(images=2)
    answer = api.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200
    view = answer.json
    assert view is not None and view["state"] == "succeeded"

    for slot, image in zip(view["slots"], images, strict=True):
        assert slot["url"].startswith(f"{api.endpoint}/{api.bucket}/")  # the stack's endpoint
        download = httpx.get(slot["url"])  # no credentials: the URL is all it takes
        assert download.status_code == 200, download.text
        assert download.content == image
        # The view's expiry is no later than the URL's own, and RESULT_URL_SECONDS away.
        expires = parse_iso(slot["urlExpiresAt"])
        assert expires <= expiry_of(slot["url"]) <= expires + 2
        assert abs(expires - (time.time() + 900)) < 30

    manifest = httpx.get(view["manifestURL"])
    assert manifest.status_code == 200
    assert manifest.json()["jobId"] == job_id
    assert parse_iso(view["manifestURLExpiresAt"]) <= expiry_of(view["manifestURL"])
    # The manifest is written once; URLs expire: it carries none.
    stored = api.s3.get_object(Bucket=api.bucket, Key=view["manifestKey"])["Body"].read()
    assert stored == manifest.content
    assert "X-Amz-" not in stored.decode()
    assert all("url" not in slot for slot in json.loads(stored)["slots"])


@URLS_ON
def test_the_answer_is_the_documented_job_view(api: Api) -> None:
    job_id, _ = api.stored_job()
    document = api.client.get("/v1/openapi.json").json
    assert document is not None
    schema = {"$ref": "#/components/schemas/JobView", "components": document["components"]}
    validator = OAS31Validator(schema, format_checker=OAS31Validator.FORMAT_CHECKER)
    view = api.get(f"/v1/jobs/{job_id}").json
    validator.validate(view)
    # The answer is the pipeline's own view, field for field (URLs are minted per call).
    job = api.uc.service.get_job(job_id)
    own = api.uc.service.job_view(job)
    unsigned = {"url", "urlExpiresAt", "manifestURL", "manifestURLExpiresAt"}
    assert {k: v for k, v in view.items() if k not in unsigned | {"slots"}} == {
        k: v for k, v in own.items() if k not in unsigned | {"slots"}
    }
    assert [{k: v for k, v in s.items() if k not in unsigned} for s in view["slots"]] == [
        {k: v for k, v in s.items() if k not in unsigned} for s in own["slots"]
    ]


@URLS_ON
def test_the_image_route_redirects_to_a_fresh_url_of_the_image(api: Api) -> None:
    job_id, [image] = api.stored_job()
    answer = api.get(f"/v1/jobs/{job_id}/images/0")
    assert answer.status_code == 302
    assert answer.headers["Cache-Control"] == "no-store"
    location = answer.headers["Location"]
    assert location.startswith(f"{api.endpoint}/{api.bucket}/")
    download = httpx.get(location)
    assert download.status_code == 200 and download.content == image
    # Another tenant's key does not reach the job, and says nothing of it.
    other = api.get(f"/v1/jobs/{job_id}/images/0", key=GLOBEX_KEY)
    assert (other.status_code, other.json["code"]) == (404, "not_found")  # type: ignore[index]


@URLS_ON
def test_the_image_route_refuses_what_it_cannot_redirect_to(api: Api) -> None:
    submitted, _ = api.uc.submitted()
    cases = {
        f"/v1/jobs/{submitted}/images/0": (409, "conflict"),  # not stored yet
        f"/v1/jobs/{submitted}/images/1": (404, "not_found"),  # the job has one image
        "/v1/jobs/0b8e2d4f-6a1c-4f3e-9d5b-7c9e1f3a5b7d/images/0": (404, "not_found"),
        "/v1/jobs/not-a-job/images/0": (404, "not_found"),
        f"/v1/jobs/{submitted}/images/first": (404, "not_found"),
    }
    for path, (status, code) in cases.items():
        answer = api.get(path)
        body = answer.json
        assert answer.status_code == status, (path, body)
        assert body is not None and set(body) == ERROR_KEYS and body["code"] == code, path
    assert api.client.get(f"/v1/jobs/{submitted}/images/0").status_code == 401


@URLS_OFF
def test_with_result_urls_off_views_carry_nulls_and_the_route_says_so(api: Api) -> None:
    job_id, _ = api.stored_job()
    view = api.get(f"/v1/jobs/{job_id}").json
    assert view is not None and view["manifestKey"]
    assert (view["manifestURL"], view["manifestURLExpiresAt"]) == (None, None)
    assert [(s["url"], s["urlExpiresAt"]) for s in view["slots"]] == [(None, None)]
    answer = api.get(f"/v1/jobs/{job_id}/images/0")
    body = answer.json
    assert answer.status_code == 404 and body is not None
    assert body["code"] == "not_found" and "turned off" in body["message"]


def test_a_get_url_reads_only_its_own_object_and_only_until_it_expires(
    s3rver_storage: S3ObjectStorage, s3rver_bucket: tuple[str, str]
) -> None:
    endpoint, bucket = s3rver_bucket
    admin = s3rver_client(endpoint)
    admin.put_object(Bucket=bucket, Key="jobs/a/00.jpg", Body=b"mine")
    admin.put_object(Bucket=bucket, Key="jobs/a/01.jpg", Body=b"not mine")
    # X-Amz-Date has whole seconds, so 2 s leaves at least one for the first GET.
    url = s3rver_storage.presign_get("jobs/a/00.jpg", 2)
    assert httpx.get(url).content == b"mine"
    parts = urlsplit(url)
    moved = parts._replace(path=f"/{bucket}/jobs/a/01.jpg").geturl()
    refused = httpx.get(moved)
    assert refused.status_code == 403 and b"not mine" not in refused.content
    assert re.search(r"<Code>SignatureDoesNotMatch</Code>", refused.text)
    for method in ("PUT", "DELETE"):
        assert httpx.request(method, url, content=b"x").status_code == 403
    assert admin.get_object(Bucket=bucket, Key="jobs/a/00.jpg")["Body"].read() == b"mine"
    expires_at = expiry_of(url)
    while time.time() <= expires_at + 0.05:  # the clock has to pass the expiry, nothing else
        time.sleep(expires_at + 0.1 - time.time())
    expired = httpx.get(url)
    assert expired.status_code == 403 and "expired" in expired.text
