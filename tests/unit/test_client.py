"""imagine_client against the jobs API answered by httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import imagine_client
from imagine_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    DailyImageCapReached,
    DownloadFailed,
    ImagineError,
    InvalidResponse,
    Job,
    NotFound,
    RetryPolicy,
    Unavailable,
    WaitTimeout,
)
from pipeline.models import JOB_STATES, JOB_TERMINAL, SLOT_STATES

pytestmark = pytest.mark.unit

BASE = "https://imagine.test"
KEY = "tenant-key"
S3 = "https://s3.test"
IMAGE = b"\xff\xd8\xff" + b"jpeg" * 100


def job_json(
    job_id: str, state: str = "queued", slots: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": job_id,
        "tenant": "dev",
        "state": state,
        "numberResults": len(slots or [{}]),
        "createdAt": "2026-05-01T10:00:00Z",
        "manifestKey": None,
        "cost": None,
        "slots": slots if slots is not None else [{"slot": 0, "state": "pending"}],
        "aFieldFromTheFuture": {"nested": True},
    }


def stored_slot(number: int, url: str | None, expires: datetime | None = None) -> dict[str, Any]:
    return {
        "slot": number,
        "state": "stored",
        "finalKey": f"jobs/j/{number:02d}.jpg",
        "format": "JPG",
        "width": 1024,
        "height": 1024,
        "bytes": len(IMAGE),
        "url": url,
        "urlExpiresAt": None if expires is None else expires.isoformat().replace("+00:00", "Z"),
    }


@dataclass
class Api:
    """The jobs API as a MockTransport handler: `answers` (a list per "METHOD path") are used
    first, in order; else the route answers from `jobs`. Every request is recorded."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, list[httpx.Response | Exception]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        queued = self.answers.get(route) or self.answers.get(f"{request.method} {request.url}")
        if queued:
            answer = queued.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if route == "POST /v1/jobs":
            return self._create(request)
        if route == "GET /v1/jobs":
            newest = list(reversed(self.jobs.values()))
            return httpx.Response(200, json={"jobs": newest, "nextCursor": None})
        if request.method == "GET" and request.url.path.startswith("/v1/jobs/"):
            job = self.jobs.get(request.url.path.rsplit("/", 1)[-1])
            if job is not None:
                return httpx.Response(200, json=job)
        return httpx.Response(404, json=error("not_found", 404, "no such job"))

    def _create(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if key in self.keys:
            job = self.jobs[self.keys[key]]
            return httpx.Response(200, json=job, headers={"Idempotent-Replayed": "true"})
        job_id = str(uuid.uuid4())
        self.keys[key] = job_id
        self.jobs[job_id] = job_json(job_id) | {"request": json.loads(request.content)}
        return httpx.Response(202, json=self.jobs[job_id])

    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == "/v1/jobs"]


def error(code: str, status: int, message: str = "", **errors: Any) -> dict[str, Any]:
    return {"code": code, "status": status, "message": message or code, "errors": errors}


@dataclass
class Clock:
    """time.monotonic and time.sleep, where sleeping moves the clock."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


NO_JITTER = RetryPolicy(jitter=False)


def client(api: Api, clock: Clock | None = None, retry: RetryPolicy = NO_JITTER) -> Client:
    clock = clock or Clock()
    http = httpx.Client(transport=httpx.MockTransport(api))
    return Client(BASE, KEY, http=http, retry=retry, sleep=clock.sleep, clock=clock)


# ------------------------------------------------------------------ submit and its key


def test_submit_sends_the_request_with_a_fresh_idempotency_key_and_the_api_key() -> None:
    api = Api()
    job = client(api).submit(
        {"positivePrompt": "a lighthouse", "resolution": "1K"},
        callback_url="https://hooks.example.com/done",
        metadata={"order": "42"},
        deadline_seconds=600,
    )
    (post,) = api.posts()
    assert post.headers["Authorization"] == f"Bearer {KEY}"
    assert uuid.UUID(post.headers["Idempotency-Key"]).version == 4
    assert json.loads(post.content) == {
        "positivePrompt": "a lighthouse",
        "resolution": "1K",
        "callbackURL": "https://hooks.example.com/done",
        "metadata": {"order": "42"},
        "deadlineSeconds": 600,
    }
    assert job.state == "queued" and not job.replayed
    assert job.raw["aFieldFromTheFuture"] == {"nested": True}


def test_each_submit_call_has_its_own_key() -> None:
    api = Api()
    jobs = {client(api).submit({"positivePrompt": "x"}).id for _ in range(2)}
    assert len(jobs) == 2
    assert len({post.headers["Idempotency-Key"] for post in api.posts()}) == 2


def test_a_submit_retried_after_a_lost_answer_makes_one_job() -> None:
    api = Api()
    sent = []

    def lose_first_answer(request: httpx.Request) -> httpx.Response:
        answer = api(request)
        sent.append(answer)
        if len(sent) == 1:  # the job was made, the answer never arrived
            raise httpx.ReadError("connection reset by peer")
        return answer

    clock = Clock()
    http = httpx.Client(transport=httpx.MockTransport(lose_first_answer))
    job = Client(BASE, KEY, http=http, retry=NO_JITTER, sleep=clock.sleep).submit(
        {"positivePrompt": "x"}
    )
    assert len(api.jobs) == 1 and job.id in api.jobs
    assert job.replayed
    keys = {post.headers["Idempotency-Key"] for post in api.posts()}
    assert len(api.posts()) == 2 and len(keys) == 1
    assert clock.slept == [0.5]


def test_submit_retries_5xx_and_429_with_the_same_key() -> None:
    api = Api(
        answers={
            "POST /v1/jobs": [
                httpx.Response(503, json=error("unavailable", 503)),
                httpx.Response(429, json=error("rate_limited", 429)),
                httpx.Response(502, text="<html>bad gateway</html>"),
            ]
        }
    )
    clock = Clock()
    job = client(api, clock).submit({"positivePrompt": "x"})
    assert job.id in api.jobs
    assert len({post.headers["Idempotency-Key"] for post in api.posts()}) == 1
    assert clock.slept == [0.5, 1.0, 2.0]


def test_the_callers_key_or_the_requests_key_is_used() -> None:
    api = Api()
    client(api).submit({"positivePrompt": "x"}, idempotency_key="order-42")
    client(api).submit({"positivePrompt": "x", "idempotencyKey": "order-43"})
    assert [post.headers["Idempotency-Key"] for post in api.posts()] == ["order-42", "order-43"]
    with pytest.raises(ValueError, match="differs"):
        client(api).submit({"positivePrompt": "x", "idempotencyKey": "a"}, idempotency_key="b")


# ------------------------------------------------------------------ errors and retries


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", imagine_client.Unauthorized),
        (404, "not_found", imagine_client.NotFound),
        (409, "conflict", imagine_client.Conflict),
        (422, "validation_failed", imagine_client.ValidationFailed),
        (400, "bad_request", imagine_client.BadRequest),
        (413, "request_entity_too_large", imagine_client.PayloadTooLarge),
        (415, "unsupported_media_type", imagine_client.UnsupportedMediaType),
        (429, "rate_limited", imagine_client.RateLimited),
        (429, "daily_image_cap", imagine_client.DailyImageCapReached),
        (429, "daily_spend_cap", imagine_client.DailySpendCapReached),
        (429, "global_spend_cap", imagine_client.GlobalSpendCapReached),
        (503, "submissions_paused", imagine_client.SubmissionsPaused),
        (503, "unavailable", imagine_client.Unavailable),
        (500, "internal", imagine_client.InternalError),
        (503, "storage_error", imagine_client.StorageError),
        (502, "provider_error", imagine_client.ProviderError),
        (422, "image_rejected", imagine_client.ImageRejected),
        (418, "a_code_from_the_future", ImagineError),
    ],
)
def test_each_error_code_raises_its_class(status: int, code: str, cls: type[ImagineError]) -> None:
    body = error(code, status, "what went wrong", positivePrompt=["required"])
    api = Api(answers={"GET /v1/jobs/j": [httpx.Response(status, json=body)] * 4})
    with pytest.raises(ImagineError) as raised:
        client(api, retry=RetryPolicy(attempts=1)).get("j")
    assert type(raised.value) is cls
    assert (raised.value.code, raised.value.status) == (code, status)
    assert raised.value.message == "what went wrong"
    assert raised.value.errors == {"positivePrompt": ["required"]}


def test_an_answer_without_the_error_shape_is_named_by_its_status() -> None:
    api = Api(answers={"GET /v1/jobs/j": [httpx.Response(502, text="<h1>Bad Gateway</h1>")] * 4})
    with pytest.raises(Unavailable) as raised:
        client(api).get("j")
    assert raised.value.status == 502 and "Bad Gateway" in raised.value.message
    assert len(api.requests) == 4  # attempts are bounded


def test_retry_after_is_waited_out_as_the_server_asks() -> None:
    limited = httpx.Response(429, json=error("rate_limited", 429), headers={"Retry-After": "3"})
    api = Api(jobs={"j": job_json("j")}, answers={"GET /v1/jobs/j": [limited]})
    clock = Clock()
    assert client(api, clock).get("j").id == "j"
    assert clock.slept == [3.0]


def test_a_daily_cap_is_raised_at_once_with_when_to_come_back() -> None:
    capped = httpx.Response(
        429, json=error("daily_image_cap", 429, "cap (5000)"), headers={"Retry-After": "3601"}
    )
    api = Api(answers={"POST /v1/jobs": [capped]})
    clock = Clock()
    with pytest.raises(DailyImageCapReached) as raised:
        client(api, clock).submit({"positivePrompt": "x"})
    assert raised.value.retry_after == 3601.0
    assert clock.slept == [] and len(api.requests) == 1


def test_a_read_that_cannot_connect_ends_in_connection_failed_without_the_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    clock = Clock()
    http = httpx.Client(transport=httpx.MockTransport(refuse))
    api = Client(BASE, KEY, http=http, retry=NO_JITTER, sleep=clock.sleep)
    with pytest.raises(ConnectionFailed) as raised:
        api.get("j")
    assert (
        str(raised.value)
        == f"connection_failed: no answer from {BASE}: [Errno 111] Connection refused"
    )
    assert clock.slept == [0.5, 1.0, 2.0]
    assert KEY not in repr(api)


def test_cancel_is_not_sent_twice_after_a_connection_lost_mid_request() -> None:
    api = Api(answers={"POST /v1/jobs/j/cancel": [httpx.ReadError("reset")]})
    with pytest.raises(ConnectionFailed):
        client(api).cancel("j")
    assert len(api.requests) == 1


def test_cancel_is_sent_again_when_it_never_left() -> None:
    cancelled = job_json("j", "cancelled")
    api = Api(
        answers={
            "POST /v1/jobs/j/cancel": [
                httpx.ConnectError("refused"),
                httpx.Response(200, json=cancelled),
            ]
        }
    )
    assert client(api).cancel("j").state == "cancelled"


def test_cancel_of_a_job_already_cancelled_returns_it_and_of_an_ended_one_conflicts() -> None:
    conflict = httpx.Response(409, json=error("conflict", 409, "already ended"))
    api = Api(
        jobs={"c": job_json("c", "cancelled"), "s": job_json("s", "succeeded")},
        answers={"POST /v1/jobs/c/cancel": [conflict], "POST /v1/jobs/s/cancel": [conflict]},
    )
    assert client(api).cancel("c").state == "cancelled"
    with pytest.raises(Conflict):
        client(api).cancel("s")


def test_job_ids_stay_one_path_segment() -> None:
    api = Api()
    with pytest.raises(NotFound):
        client(api).get("../jobs?state=x")
    assert api.requests[0].url.raw_path == b"/v1/jobs/..%2Fjobs%3Fstate%3Dx"


# ------------------------------------------------------------------ typed results


def test_a_job_keeps_unknown_fields_and_reads_its_slots() -> None:
    expires = datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    data = job_json("j", "partially_succeeded", [stored_slot(0, f"{S3}/0", expires)])
    data["slots"].append(
        {"slot": 1, "state": "failed", "error": {"code": "deadline", "message": "late"}, "new": 1}
    )
    job = Job.from_dict(data)
    assert job.ended and not job.succeeded and job.stored == 1
    assert job.created_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    first, second = job.slots
    assert (first.width, first.format, first.extension, first.url_expires_at) == (
        1024,
        "JPG",
        "jpg",
        expires,
    )
    assert second.error is not None and second.error.code == "deadline"
    assert second.raw["new"] == 1 and job.raw == data
    with pytest.raises(InvalidResponse):
        Job.from_dict({"state": "queued"})


def test_the_clients_states_are_the_pipelines() -> None:
    assert imagine_client.JOB_STATES == tuple(JOB_STATES)
    assert imagine_client.JOB_TERMINAL == set(JOB_TERMINAL)
    assert imagine_client.SLOT_STATES == tuple(SLOT_STATES)


# ------------------------------------------------------------------ wait and list


def progressing(states: list[tuple[str, str]]) -> Callable[[httpx.Request], httpx.Response]:
    """GET /v1/jobs/j answers the next (job state, slot state) each time, the last one for ever."""

    def answer(request: httpx.Request) -> httpx.Response:
        job, slot = states.pop(0) if len(states) > 1 else states[0]
        return httpx.Response(200, json=job_json("j", job, [{"slot": 0, "state": slot}]))

    return answer


def test_wait_polls_with_backoff_reset_by_each_change_until_the_job_ends() -> None:
    states = (
        [("queued", "pending")] * 4 + [("running", "submitted")] * 2 + [("succeeded", "stored")]
    )
    clock = Clock()
    http = httpx.Client(transport=httpx.MockTransport(progressing(states)))
    seen: list[str] = []
    job = Client(BASE, KEY, http=http, sleep=clock.sleep, clock=clock).wait(
        "j", on_change=lambda job: seen.append(f"{job.state}/{job.slots[0].state}")
    )
    assert job.state == "succeeded"
    assert seen == ["queued/pending", "running/submitted", "succeeded/stored"]
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 0.5, 1.0]


def test_wait_gives_up_at_its_timeout_with_the_last_job() -> None:
    clock = Clock()
    http = httpx.Client(transport=httpx.MockTransport(progressing([("running", "submitted")])))
    with pytest.raises(WaitTimeout) as raised:
        Client(BASE, KEY, http=http, sleep=clock.sleep, clock=clock).wait("j", timeout=20)
    assert raised.value.job.state == "running"
    assert clock.now == 20 and max(clock.slept) == 5.0


def test_list_follows_next_cursor_page_by_page() -> None:
    pages = {
        None: ([job_json("a"), job_json("b")], "170.5"),
        "170.5": ([job_json("c")], "169.0"),
        "169.0": ([], None),
    }

    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        jobs, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"jobs": jobs, "nextCursor": cursor})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    listed = Client(BASE, KEY, http=http).list("queued", page_size=2)
    assert [job.id for job in listed] == ["a", "b", "c"]
    assert [dict(r.url.params) for r in asked] == [
        {"limit": "2", "state": "queued"},
        {"limit": "2", "state": "queued", "cursor": "170.5"},
        {"limit": "2", "state": "queued", "cursor": "169.0"},
    ]


def test_a_bad_state_is_the_apis_422() -> None:
    refused = httpx.Response(
        422,
        json=error(
            "validation_failed", 422, "the query is invalid", state=["Must be one of: queued."]
        ),
    )
    api = Api(answers={"GET /v1/jobs": [refused]})
    with pytest.raises(imagine_client.ValidationFailed) as raised:
        list(client(api).list("bogus"))
    assert raised.value.errors == {"state": ["Must be one of: queued."]}


# ------------------------------------------------------------------ downloads


def s3(api: Api, expect: bytes = IMAGE) -> Callable[[httpx.Request], httpx.Response]:
    """The API plus S3: a presigned GET carries no API key and answers the image."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "s3.test":
            api.requests.append(request)
            assert "Authorization" not in request.headers
            if request.url.params.get("expired"):
                return httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")
            return httpx.Response(200, content=expect)
        return api(request)

    return answer


def test_download_image_uses_the_slots_url_while_it_is_valid() -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    api = Api(
        jobs={"j": job_json("j", "succeeded", [stored_slot(0, f"{S3}/0?X-Amz-Signature=s", later)])}
    )
    http = httpx.Client(transport=httpx.MockTransport(s3(api)))
    assert Client(BASE, KEY, http=http).download_image("j", 0) == IMAGE
    assert [str(r.url) for r in api.requests] == [f"{BASE}/v1/jobs/j", f"{S3}/0?X-Amz-Signature=s"]


@pytest.mark.parametrize(
    "url",
    [
        None,  # no URL in the job view
        f"{S3}/stale",  # expiring in 10 s
        f"{S3}/revoked?expired=1",  # valid by the clock, refused by S3
    ],
)
def test_download_image_gets_a_fresh_url_from_the_image_endpoint(url: str | None) -> None:
    soon = datetime.now(UTC) + (
        timedelta(seconds=10) if url and "stale" in url else timedelta(hours=1)
    )
    api = Api(
        jobs={"j": job_json("j", "succeeded", [stored_slot(0, url, soon if url else None)])},
        answers={
            "GET /v1/jobs/j/images/0": [
                httpx.Response(302, headers={"Location": f"{S3}/fresh?sig=1"})
            ]
        },
    )
    http = httpx.Client(transport=httpx.MockTransport(s3(api)))
    assert Client(BASE, KEY, http=http).download_image("j", 0) == IMAGE
    paths = [r.url.path for r in api.requests]
    assert paths[-2:] == ["/v1/jobs/j/images/0", "/fresh"]
    assert "/stale" not in paths
    assert api.requests[-2].headers["Authorization"] == f"Bearer {KEY}"


def test_a_short_image_is_refused() -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    api = Api(jobs={"j": job_json("j", "succeeded", [stored_slot(0, f"{S3}/0", later)])})
    http = httpx.Client(transport=httpx.MockTransport(s3(api, expect=IMAGE[:10])))
    with pytest.raises(DownloadFailed, match="10 bytes"):
        Client(BASE, KEY, http=http).download_image("j", 0)


def test_download_saves_each_stored_image_and_skips_the_rest(tmp_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    slots = [
        stored_slot(0, f"{S3}/0", later),
        {"slot": 1, "state": "failed"},
        stored_slot(2, f"{S3}/2", later),
    ]
    api = Api(jobs={"j": job_json("j", "partially_succeeded", slots)})
    http = httpx.Client(transport=httpx.MockTransport(s3(api)))
    saved = Client(BASE, KEY, http=http).download("j", tmp_path / "out")
    assert [path.name for path in saved] == ["j-00.jpg", "j-02.jpg"]
    assert all(path.read_bytes() == IMAGE for path in saved)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["j-00.jpg", "j-02.jpg"]
    with pytest.raises(DownloadFailed, match="failed, not stored"):
        Client(BASE, KEY, http=http).download_image("j", 1)


# ------------------------------------------------------------------ asyncio


def test_the_async_client_submits_retries_lists_waits_and_downloads(tmp_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    api = Api(
        answers={
            "POST /v1/jobs": [
                httpx.ReadTimeout("slow"),
                httpx.Response(503, json=error("unavailable", 503)),
            ]
        }
    )
    clock = Clock()
    http = httpx.AsyncClient(transport=httpx.MockTransport(s3(api)))

    async def scenario() -> None:
        async with AsyncClient(
            BASE, KEY, http=http, retry=NO_JITTER, sleep=clock.asleep, clock=clock
        ) as client:
            job = await client.submit({"positivePrompt": "x"})
            assert len(api.posts()) == 3 and list(api.jobs) == [job.id]
            assert len({post.headers["Idempotency-Key"] for post in api.posts()}) == 1
            assert clock.slept == [0.5, 1.0]
            done = job_json(job.id, "succeeded", [stored_slot(0, f"{S3}/0", later)])
            api.jobs[job.id] = done
            listing = httpx.Response(200, json={"jobs": [done], "nextCursor": None})
            api.answers["GET /v1/jobs"] = [listing]
            assert [found.id async for found in client.list()] == [job.id]
            assert (await client.wait(job.id)).succeeded
            assert await client.download(job.id, tmp_path) == [tmp_path / f"{job.id}-00.jpg"]
            assert await client.download_image(job.id, 0) == IMAGE
        await http.aclose()

    asyncio.run(scenario())
    (saved,) = tmp_path.iterdir()
    assert saved.read_bytes() == IMAGE


# ------------------------------------------------------------------ what it imports

BLOCKED = ("celery", "kombu", "boto3", "botocore", "flask", "werkzeug", "redis", "marshmallow")


def test_the_client_imports_and_works_without_the_pipelines_dependencies() -> None:
    script = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked for this test: " + name)
                return None

        sys.meta_path.insert(0, Blocked())
        import httpx
        import imagine_client

        def api(request):
            if request.method == "POST":
                return httpx.Response(202, json={{"id": "j1", "state": "queued", "slots": []}})
            return httpx.Response(404, json={{"code": "not_found", "status": 404,
                                              "message": "no job", "errors": {{}}}})

        client = imagine_client.Client(
            "https://api.test", "k", http=httpx.Client(transport=httpx.MockTransport(api))
        )
        assert client.submit({{"positivePrompt": "x"}}).id == "j1"
        try:
            client.get("nope")
        except imagine_client.NotFound as exc:
            print("not found:", exc.message)
        try:
            import celery
        except ImportError as exc:
            print(exc)
        watched = {BLOCKED!r} + ("pipeline",)
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in watched)
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "not found: no job",
        "blocked for this test: celery",
        "loaded: []",
    ]
