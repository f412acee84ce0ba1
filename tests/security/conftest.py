"""The security suite's harness: the real app and use cases over a real Redis server and a real
S3 server, with every outbound request (Runware, callbacks, image fetches) recorded, so each
attack can be checked for its answer and for everything it must not have changed."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from pipeline.config import Settings
from pipeline.interfaces import JobStore
from pipeline.runware import RunwareClient
from pipeline.services import JobService
from pipeline.signing import webhook_token
from pipeline.wiring import build_service
from tests.conftest import RecordingDispatcher
from webhooks.app import create_app

WEBHOOK_SECRET = "security-suite-webhook-secret-0001"
OLD_WEBHOOK_SECRET = "security-suite-webhook-secret-0000"
RUNWARE_KEY = "security-suite-runware-key"
CALLBACK_SECRET = "whsec_c2VjdXJpdHktc3VpdGUtY2FsbGJhY2stc2VjcmV0ISE="
ACME_KEY = "key-of-acme-0123456789"
GLOBEX_KEY = "key-of-globex-0123456789"
RUNWARE_URL = "https://api.runware.test/v1"
PROMPT = "a lighthouse at dawn"
ERROR_KEYS = {"code", "status", "message", "errors"}


@dataclass
class Outbound:
    """Every request the pipeline sends out; Runware accepts each task it is sent."""

    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url).startswith(RUNWARE_URL):
            tasks = json.loads(request.content)
            return httpx.Response(
                200,
                json={
                    "data": [
                        {"taskType": "imageInference", "taskUUID": task["taskUUID"]}
                        for task in tasks
                        if task.get("taskType") == "imageInference"
                    ]
                },
            )
        return httpx.Response(200, content=b"ok")


def jpeg(width: int = 1024, height: int = 1024) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@dataclass
class Harness:
    """The app, its use cases and what to compare before and after an attack."""

    settings: Settings
    client: FlaskClient
    service: JobService
    store: JobStore
    redis: redis.Redis
    s3: Any
    bucket: str
    prefix: str
    outbound: Outbound
    dispatcher: RecordingDispatcher

    # --- what an attack must leave as it was ---
    def snapshot(self) -> dict[str, Any]:
        return {
            "redis": self._redis_dump(),
            "s3": self.s3_keys(),
            "outbound": len(self.outbound.requests),
            "dispatched": list(self.dispatcher.sent),
        }

    def assert_unchanged(self, before: dict[str, Any]) -> None:
        after = self.snapshot()
        assert after["outbound"] == before["outbound"], "an outbound request was sent"
        assert after["dispatched"] == before["dispatched"], "a worker was nudged"
        assert after["s3"] == before["s3"], "the bucket changed"
        assert after["redis"] == before["redis"], "the job store changed"

    def _redis_dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = {}
        for key in sorted(self.redis.scan_iter("*")):
            kind = self.redis.type(key)
            if kind == "hash":
                dump[key] = self.redis.hgetall(key)
            elif kind == "string":
                dump[key] = self.redis.get(key)
            elif kind == "zset":
                dump[key] = self.redis.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                dump[key] = self.redis.lrange(key, 0, -1)
            elif kind == "set":
                dump[key] = sorted(self.redis.smembers(key))
            elif kind == "stream":
                dump[key] = self.redis.xlen(key)
        return dump

    def s3_keys(self) -> list[str]:
        answer = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def circuit(self) -> dict[str, Any]:
        """The circuit as an operator reads it: empty while closed."""
        state = self.service.circuit()
        return {"state": "open", **dataclasses.asdict(state)} if state.open else {}

    # --- requests ---
    def webhook_url(self, task_uuid: str, token: str | None = None) -> str:
        token = webhook_token(WEBHOOK_SECRET, task_uuid) if token is None else token
        return f"/webhooks/runware/{task_uuid}?token={token}"

    def webhook(
        self,
        task_uuid: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.post(
            self.webhook_url(task_uuid, token),
            data=data,
            content_type=content_type,
            headers=headers or {},
        )

    def api(
        self,
        method: str,
        path: str,
        *,
        key: str | None = ACME_KEY,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers.setdefault("Authorization", f"Bearer {key}")
        return self.client.open(path, method=method, headers=all_headers, **kwargs)

    # --- jobs in known states ---
    def submitted_job(self, tenant: str = "acme", **request: Any) -> tuple[str, str]:
        """A job whose one image was accepted by Runware: (job id, taskUUID)."""
        body = {"positivePrompt": PROMPT, "width": 1024, "height": 1024, **request}
        job, _ = self.service.create_job(body, tenant)
        self.service.submit_job(job.id)
        slot = self.store.get_slot(job.id, 0)
        assert slot is not None and slot.state == "submitted" and slot.task_uuid
        return job.id, slot.task_uuid

    def succeeded_job(self, tenant: str = "acme") -> tuple[str, str]:
        """A job whose image was uploaded, reported and stored: (job id, taskUUID)."""
        job_id, task_uuid = self.submitted_job(tenant)
        self.s3.put_object(
            Bucket=self.bucket, Key=self.service.layout.staging(job_id, task_uuid), Body=jpeg()
        )
        answer = self.webhook(task_uuid, success_body(task_uuid))
        assert answer.status_code == 200, answer.json
        job = self.store.get_job(job_id)
        assert job is not None and job.state == "succeeded", job
        return job_id, task_uuid

    def failed_job(self, tenant: str = "acme") -> tuple[str, str]:
        """A job whose image the provider refused for good: (job id, taskUUID)."""
        job_id, task_uuid = self.submitted_job(tenant)
        answer = self.webhook(
            task_uuid,
            {
                "errors": [
                    {
                        "taskUUID": task_uuid,
                        "code": "providerContentPolicyViolation",
                        "message": "refused",
                    }
                ]
            },
        )
        assert answer.status_code == 200, answer.json
        job = self.store.get_job(job_id)
        assert job is not None and job.state == "failed", job
        return job_id, task_uuid


def success_body(task_uuid: str, **fields: Any) -> dict[str, Any]:
    return {
        "data": [
            {
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "imageUUID": str(uuid.uuid4()),
                "seed": 7,
                "cost": 0.07,
                "imageURL": "https://im.runware.ai/image/x.jpg",
                **fields,
            }
        ]
    }


def assert_error(answer: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is the one JSON error shape, with this status (and code)."""
    assert answer.status_code == status, (answer.status_code, answer.get_data(as_text=True))
    body = answer.get_json(silent=True)
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert body["status"] == status and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], dict)
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
def security_settings(redis_server: str, s3_server: str, s3_bucket: str) -> Settings:
    # A database of its own: the end-to-end suite's worker and beat, still running on database 0
    # of the same server, must neither see these jobs nor show up in the snapshots.
    return Settings.from_env(
        {
            "REDIS_URL": f"{redis_server.rsplit('/', 1)[0]}/1",
            "S3_ENDPOINT_URL": s3_server,
            "S3_BUCKET": s3_bucket,
            "S3_PREFIX": f"security-{uuid.uuid4().hex[:8]}/",
            "RUNWARE_API_KEY": RUNWARE_KEY,
            "RUNWARE_API_URL": RUNWARE_URL,
            "WEBHOOK_SECRETS": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
            "API_KEYS": f"acme:{ACME_KEY},globex:{GLOBEX_KEY}",
            "CALLBACK_SECRET": CALLBACK_SECRET,
            "ALLOW_PRIVATE_URLS": "false",
            "RUNWARE_IMAGE_HOSTS": "im.runware.ai",
            "WEBHOOK_MAX_BODY_BYTES": "65536",
            "LOG_FORMAT": "text",
            # Rate counts would change Redis between every snapshot; the fuzzers send hundreds of
            # jobs a second. The limits' own tests are tests/integration/test_limits*.py.
            "API_RATE_LIMIT": "off",
            "TENANT_DAILY_IMAGES": "10000000",
            "TENANT_DAILY_SPEND_USD": "10000000",
            "GLOBAL_DAILY_SPEND_USD": "10000000",
        }
    )


@pytest.fixture
def harness(security_settings: Settings, s3_client: Any, s3_bucket: str) -> Iterator[Harness]:
    own_redis = redis.Redis.from_url(security_settings.redis_url, decode_responses=True)
    own_redis.flushdb()
    outbound = Outbound()
    dispatcher = RecordingDispatcher()
    http = httpx.Client(transport=httpx.MockTransport(outbound.handle))
    service = build_service(
        security_settings,
        dispatcher=dispatcher,
        http=http,
        runware=RunwareClient(http, RUNWARE_KEY, RUNWARE_URL),
    )
    app = create_app(security_settings, service=service, inline_service=service)
    yield Harness(
        settings=security_settings,
        client=app.test_client(),
        service=service,
        store=service.store,
        redis=own_redis,
        s3=s3_client,
        bucket=s3_bucket,
        prefix=security_settings.s3_prefix,
        outbound=outbound,
        dispatcher=dispatcher,
    )
    http.close()
    own_redis.close()
