"""Delivering a job's end to its callback URL: what a receiver verifies with the reference
`standardwebhooks` library, which event id it sees, when attempts are retried and given up,
and what each attempt leaves in the job's callback log."""

from __future__ import annotations

import base64
import email.utils
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from unittest.mock import MagicMock

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline import callbacks
from pipeline.callback_log import MemoryCallbackLog
from pipeline.callbacks import (
    BACKOFF_CAP_SECONDS,
    FIRST_RETRY_SECONDS,
    backoff_cap,
    event_id,
    resend_callback,
    retry_delay,
    send_callback,
)
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import CallbackUnavailable, Conflict, NotFound
from pipeline.models import CallbackOutcome, Job, JobState
from pipeline.storage import MemoryObjectStorage

pytestmark = pytest.mark.unit

JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
URL = "https://93.184.216.34/hooks/imagine"
ENDED = 1_700_000_000.0
SECRET = "whsec_" + base64.b64encode(b"d" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
WINDOW = 6 * 3600


class Dispatcher:
    def __init__(self) -> None:
        self.notified: list[str] = []

    def notify_job(self, job_id: str) -> None:
        self.notified.append(job_id)


class Receiver:
    """The callback URL's server: answers each request with the next of `answers`."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers) or [httpx.Response(204)]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def verified(self, secret: str = SECRET, index: int = -1) -> Any:
        request = self.requests[index]
        return Webhook(secret).verify(request.content, dict(request.headers))


def ended_job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "id": JOB,
        "tenant": "acme",
        "state": JobState.SUCCEEDED,
        "model": "xai:grok-imagine@image-pro",
        "params": {},
        "slot_count": 1,
        "output_format": "JPG",
        "created_at": ENDED - 60,
        "updated_at": ENDED,
        "deadline_at": ENDED + 840,
        "ended_at": ENDED,
        "callback_url": URL,
        "manifest_key": f"jobs/{JOB}/manifest.json",
        "manifest_version": 1,
    }
    return Job(**{**values, **overrides})


class Harness:
    def __init__(self, receiver: Receiver, env: dict[str, str] | None = None) -> None:
        self.receiver = receiver
        self.job = ended_job()
        self.log = MemoryCallbackLog()
        self.dispatcher = Dispatcher()
        store = MagicMock()
        store.get_job.side_effect = lambda job_id: self.job if job_id == JOB else None
        self.ctx = Context(
            settings=Settings.from_env(env if env is not None else {"CALLBACK_SECRET": SECRET}),
            store=store,
            storage=MemoryObjectStorage(),
            dispatcher=self.dispatcher,  # type: ignore[arg-type]
            circuit=MagicMock(),
            budget=MagicMock(),
            http=httpx.Client(transport=httpx.MockTransport(receiver)),
        )

    def send(self) -> CallbackOutcome:
        return send_callback(self.ctx, JOB, self.log)

    def attempts(self) -> list[dict[str, Any]]:
        return self.log.attempts(JOB)


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the use cases' clock to `seconds` after the job ended."""

    def move(seconds: float) -> None:
        monkeypatch.setattr("pipeline.clock.now", lambda: ENDED + seconds)

    move(1)
    return move


def test_a_receiver_verifies_the_callback_with_the_reference_library(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(204)))
    assert h.send() == CallbackOutcome.SENT
    # The signature's timestamp is the real time of sending, which the verifier checks.
    event = h.receiver.verified()
    assert event["type"] == "job.ended"
    assert event["timestamp"] == "2023-11-14T22:13:20Z"
    assert (event["data"]["id"], event["data"]["state"]) == (JOB, "succeeded")
    assert event["data"]["manifestKey"] == f"jobs/{JOB}/manifest.json"
    request = h.receiver.requests[0]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == event_id(h.job)
    assert (request.url.host, request.headers["host"]) == ("93.184.216.34", "93.184.216.34")
    with pytest.raises(WebhookVerificationError):
        h.receiver.verified(OLD)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(
            request.content.replace(b"succeeded", b"failed"), dict(request.headers)
        )


def test_each_attempt_is_recorded_with_its_status_duration_and_webhook_id(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(503), httpx.Response(204)))
    with pytest.raises(CallbackUnavailable) as caught:
        h.send()
    wait = caught.value.retry_after
    assert wait is not None and FIRST_RETRY_SECONDS / 2 <= wait <= FIRST_RETRY_SECONDS
    assert caught.value.backoff is False  # the worker waits exactly this long
    at(1 + wait)
    assert h.send() == CallbackOutcome.SENT
    first, second = h.attempts()
    webhook_id = event_id(h.job)
    assert first == {
        "at": "2023-11-14T22:13:21Z",
        "webhookId": webhook_id,
        "outcome": "retrying",
        "status": 503,
        "error": None,
        "durationMs": first["durationMs"],
        "nextAttemptAt": first["nextAttemptAt"],
    }
    assert first["nextAttemptAt"] is not None and first["durationMs"] >= 0
    assert (second["outcome"], second["status"], second["webhookId"]) == ("sent", 204, webhook_id)
    assert second["nextAttemptAt"] is None
    assert [r.headers["webhook-id"] for r in h.receiver.requests] == [webhook_id] * 2


def test_the_webhook_id_is_stable_across_retries_and_new_after_a_reopen(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(500)))
    for _ in range(3):
        with pytest.raises(CallbackUnavailable):
            h.send()
    # A late result rewrites the manifest of the ended job: the same end, the same event.
    h.job = replace(h.job, manifest_version=2)
    with pytest.raises(CallbackUnavailable):
        h.send()
    ids = {request.headers["webhook-id"] for request in h.receiver.requests}
    assert len(ids) == 1
    # An operator's retry reopens the job; it ends again later: a new event.
    h.job = replace(h.job, manifest_version=3, ended_at=ENDED + 900, state=JobState.FAILED)
    with pytest.raises(CallbackUnavailable):
        h.send()
    reopened = h.receiver.requests[-1].headers["webhook-id"]
    assert reopened not in ids and reopened == event_id(h.job)
    assert event_id(h.job) == f"job-{JOB}-ended-{round((ENDED + 900) * 1000)}"


def test_a_tenant_rotating_its_secret_signs_with_both(at: Any) -> None:
    env = {"CALLBACK_SECRET": SECRET, "CALLBACK_SECRETS": f"acme:{OLD},acme:{NEW}"}
    h = Harness(Receiver(), env)
    assert h.send() == CallbackOutcome.SENT
    assert len(h.receiver.requests[0].headers["webhook-signature"].split(" ")) == 2
    assert h.receiver.verified(OLD) == h.receiver.verified(NEW)
    with pytest.raises(WebhookVerificationError):
        h.receiver.verified(SECRET)  # the default is not this tenant's


def test_a_tenant_without_a_secret_gets_no_callback(at: Any) -> None:
    h = Harness(Receiver(), {"CALLBACK_SECRETS": f"globex:{NEW}"})
    assert h.send() == CallbackOutcome.UNSIGNED
    assert (h.receiver.requests, h.attempts()) == ([], [])


def test_a_4xx_is_recorded_and_not_retried(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(410)))
    assert h.send() == CallbackOutcome.REJECTED
    assert [(a["outcome"], a["status"]) for a in h.attempts()] == [("rejected", 410)]


def test_a_connection_error_is_retried_and_recorded(at: Any) -> None:
    h = Harness(Receiver(httpx.ConnectError("refused")))
    with pytest.raises(CallbackUnavailable, match="ConnectError"):
        h.send()
    [attempt] = h.attempts()
    assert (attempt["outcome"], attempt["status"], attempt["error"]) == (
        "retrying",
        None,
        "ConnectError",
    )


def test_the_receivers_retry_after_is_honoured_in_seconds_or_as_a_date(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(429, headers={"Retry-After": "120"})))
    with pytest.raises(CallbackUnavailable) as caught:
        h.send()
    assert caught.value.retry_after == 120
    date = email.utils.formatdate(ENDED + 1 + 600, usegmt=True)
    h = Harness(Receiver(httpx.Response(503, headers={"Retry-After": date})))
    with pytest.raises(CallbackUnavailable) as caught:
        h.send()
    assert caught.value.retry_after == pytest.approx(600)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("-5", 0.0),
        (email.utils.formatdate(ENDED + 1 + 90, usegmt=True), 90.0),
        (email.utils.formatdate(ENDED + 1 + 90), 90.0),  # "-0000": UTC too
        (email.utils.formatdate(ENDED - 90, usegmt=True), 0.0),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    at: Any, header: str, seconds: float | None
) -> None:
    response = httpx.Response(503, headers={"Retry-After": header} if header else {})
    assert callbacks.parse_retry_after(response) == (
        None if seconds is None else pytest.approx(seconds)
    )


def test_once_the_window_is_spent_the_delivery_gives_up_and_records_it(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(503)))
    at(WINDOW - 10)
    with pytest.raises(CallbackUnavailable) as caught:
        h.send()
    assert caught.value.retry_after is not None and caught.value.retry_after <= 10
    at(WINDOW)  # the last attempt falls at the window's end
    assert h.send() == CallbackOutcome.GAVE_UP
    assert [a["outcome"] for a in h.attempts()] == ["retrying", "gave_up"]
    assert h.attempts()[-1]["nextAttemptAt"] is None


def test_a_retry_after_past_the_window_gives_up_at_once(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(503, headers={"Retry-After": "900"})))
    at(WINDOW - 600)
    assert h.send() == CallbackOutcome.GAVE_UP


def test_an_operator_resend_is_the_same_event_with_a_window_of_its_own(at: Any) -> None:
    h = Harness(Receiver(httpx.Response(503)))
    at(WINDOW + 3600)
    assert h.send() == CallbackOutcome.GAVE_UP
    assert resend_callback(h.ctx, JOB, h.log) == event_id(h.job)
    assert h.dispatcher.notified == [JOB]
    # The resend's delivery retries from its own start, under the same webhook-id.
    with pytest.raises(CallbackUnavailable):
        h.send()
    assert h.attempts()[-1]["outcome"] == "retrying"
    assert {r.headers["webhook-id"] for r in h.receiver.requests} == {event_id(h.job)}
    at(WINDOW + 3600 + WINDOW)
    assert h.send() == CallbackOutcome.GAVE_UP


def test_a_resend_needs_an_ended_job_with_a_callback_url(at: Any) -> None:
    h = Harness(Receiver())
    with pytest.raises(NotFound):
        resend_callback(h.ctx, "no-such-job", h.log)
    h.job = replace(h.job, callback_url=None)
    with pytest.raises(Conflict, match="no callbackURL"):
        resend_callback(h.ctx, JOB, h.log)
    h.job = replace(h.job, callback_url=URL, state=JobState.RUNNING, ended_at=None)
    with pytest.raises(Conflict, match="has not ended"):
        resend_callback(h.ctx, JOB, h.log)
    assert h.dispatcher.notified == []


def test_waits_grow_with_the_time_since_the_event_up_to_the_cap() -> None:
    cap = 1800.0
    assert retry_delay(0, WINDOW, None, cap, rand=lambda: 0.0) == FIRST_RETRY_SECONDS / 2
    assert retry_delay(0, WINDOW, None, cap, rand=lambda: 1.0) == FIRST_RETRY_SECONDS
    assert retry_delay(100, WINDOW, None, cap, rand=lambda: 0.0) == 50
    assert retry_delay(10_000, WINDOW, None, cap, rand=lambda: 1.0) == cap
    assert retry_delay(0, WINDOW, 90, cap, rand=lambda: 0.0) == 90  # Retry-After
    assert retry_delay(0, WINDOW, 7200, cap, rand=lambda: 0.0) == cap  # ... up to the cap
    assert retry_delay(WINDOW - 30, 30, None, cap, rand=lambda: 1.0) == 30  # the window's end
    assert retry_delay(WINDOW - 30, 30, 60, cap) is None  # asked to wait past it
    assert retry_delay(WINDOW, 0, None, cap) is None


def test_a_receiver_down_for_the_whole_window_gets_a_few_dozen_attempts() -> None:
    rng = random.Random(7)
    cap = backoff_cap(Settings.from_env({}))
    elapsed, waits = 0.0, []
    while (wait := retry_delay(elapsed, WINDOW - elapsed, None, cap, rng.random)) is not None:
        waits.append(wait)
        elapsed += wait
    assert 15 <= len(waits) <= 40
    assert max(waits) <= cap and elapsed == pytest.approx(WINDOW)


def test_no_countdown_reaches_the_visibility_timeout() -> None:
    assert backoff_cap(Settings.from_env({})) == BACKOFF_CAP_SECONDS
    short = Settings.from_env({"CELERY_VISIBILITY_TIMEOUT": "600"})
    assert backoff_cap(short) == 300
    for elapsed in [0.0, 100.0, 5000.0]:
        wait = retry_delay(elapsed, WINDOW, 86_400, backoff_cap(short))
        assert wait is not None and wait < short.visibility_timeout_seconds


def test_the_event_body_is_the_job_view_under_its_type_with_fresh_result_urls(at: Any) -> None:
    h = Harness(Receiver())
    body = json.loads(callbacks.event_body(h.ctx, h.job))
    assert set(body) == {"type", "timestamp", "data"}
    assert body["data"]["callbackURL"] == URL
    assert body["data"]["manifestURL"] is not None
    off = Harness(Receiver(), {"CALLBACK_SECRET": SECRET, "RESULT_URL_SECONDS": "0"})
    assert json.loads(callbacks.event_body(off.ctx, off.job))["data"]["manifestURL"] is None
