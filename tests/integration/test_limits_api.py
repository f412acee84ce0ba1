"""The jobs API's limits as a client meets them, over a real Redis: a 429 in the one error shape
with the limit's code and Retry-After, for the request rate and for each daily cap; the webhook
receiver, health and metrics never counted."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from pipeline.config import Settings
from pipeline.quotas import seconds_to_utc_midnight
from pipeline.signing import webhook_token
from pipeline.wiring import build_service
from tests.conftest import RecordingDispatcher
from webhooks.app import create_app

pytestmark = pytest.mark.integration

ACME = "key-of-acme-limits-0001"
GLOBEX = "key-of-globex-limits-0001"
SECRET = "limits-suite-webhook-secret-0001"
TASK = "1607528b-b740-4975-8cc1-6dc6b2d18f60"
BODY = {"positivePrompt": "a lighthouse at dawn", "width": 1024, "height": 1024}
ERROR_KEYS = {"code", "status", "message", "errors"}


@pytest.fixture
def limits_settings(request: pytest.FixtureRequest, redis_server: str) -> Settings:
    """Settings with generous limits but those a test names; `indirect` parametrization."""
    overrides: dict[str, str] = getattr(request, "param", {})
    # A database of its own: the other suites use 0 (e2e), 1 (security) and 2 (use cases).
    return Settings.from_env(
        {
            "REDIS_URL": f"{redis_server.rsplit('/', 1)[0]}/3",
            "WEBHOOK_SECRETS": SECRET,
            "API_KEYS": f"acme:{ACME},globex:{GLOBEX}",
            "API_RATE_LIMIT": "1000/second",
            "LOG_FORMAT": "text",
            **overrides,
        }
    )


@pytest.fixture
def app(limits_settings: Settings) -> Iterator[Flask]:
    """The receiver with every role, its use cases over the suite's Redis, nudges recorded."""
    client = redis.Redis.from_url(limits_settings.redis_url)
    client.flushdb()
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    service = build_service(limits_settings, dispatcher=RecordingDispatcher(), http=http)
    yield create_app(limits_settings, service=service, inline_service=service)
    http.close()
    client.close()


@pytest.fixture
def api(app: Flask) -> FlaskClient:
    return app.test_client()


def post_job(api: FlaskClient, key: str, images: int, **headers: str) -> TestResponse:
    return api.post(
        "/v1/jobs",
        json={**BODY, "numberResults": images},
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def assert_limited(answer: TestResponse, code: str) -> dict[str, Any]:
    """A 429 in the one error shape with this code, and a Retry-After in whole seconds."""
    assert answer.status_code == 429, (answer.status_code, answer.get_data(as_text=True))
    body = answer.get_json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS
    assert (body["code"], body["status"], body["errors"]) == (code, 429, {})
    assert answer.headers["Retry-After"].isdigit()
    return body


def assert_waits_to_midnight(answer: TestResponse) -> None:
    expected = math.ceil(seconds_to_utc_midnight(time.time()))
    assert abs(int(answer.headers["Retry-After"]) - expected) <= 2


# ------------------------------------------------------------------ request rate


@pytest.mark.parametrize("limits_settings", [{"API_RATE_LIMIT": "3/minute"}], indirect=True)
def test_a_tenant_over_its_rate_gets_429_until_the_window_ends(api: FlaskClient) -> None:
    acme = {"Authorization": f"Bearer {ACME}"}
    for _ in range(3):
        assert api.get("/v1/jobs", headers=acme).status_code == 200
    answer = api.post("/v1/jobs", json=BODY, headers=acme)  # every route draws on one count

    body = assert_limited(answer, "rate_limited")
    assert body["message"] == "rate limit of 3 per 1 minute on the jobs API exceeded"
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    # Another tenant has a count of its own.
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {GLOBEX}"}).status_code == 200


@pytest.mark.parametrize("limits_settings", [{"API_RATE_LIMIT": "3/minute"}], indirect=True)
def test_requests_without_a_known_key_are_counted_by_address(api: FlaskClient) -> None:
    wrong = {"Authorization": "Bearer guessed-key"}
    for _ in range(3):
        assert api.get("/v1/jobs", headers=wrong).status_code == 401
    assert_limited(api.get("/v1/jobs", headers=wrong), "rate_limited")
    assert_limited(api.get("/v1/jobs"), "rate_limited")
    # A known key is counted against its tenant, not the address.
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {ACME}"}).status_code == 200


@pytest.mark.parametrize("limits_settings", [{"API_RATE_LIMIT": "2/minute"}], indirect=True)
def test_webhooks_health_and_metrics_are_never_counted(
    app: Flask, api: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    [limiter] = app.extensions["limiter"]
    client = limiter.storage.storage  # the limiter's own Redis client
    commands: list[Any] = []
    forward = client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return forward(*args, **options)

    monkeypatch.setattr(client, "execute_command", counted)
    for _ in range(5):
        # An unknown taskUUID behind a good token: the receiver's answer, never a 429.
        token = webhook_token(SECRET, TASK)
        answer = api.post(f"/webhooks/runware/{TASK}?token={token}", json={"data": []})
        assert answer.status_code == 404
        assert api.get("/healthz").status_code == 200
        assert api.get("/metrics").status_code == 200
    assert commands == [], "the limiter touched Redis on a request it does not limit"

    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {ACME}"}).status_code == 200
    assert commands, "the jobs API is counted"


@pytest.mark.parametrize("limits_settings", [{"API_RATE_LIMIT": "off"}], indirect=True)
def test_with_the_rate_off_nothing_is_counted(app: Flask, api: FlaskClient) -> None:
    assert "limiter" not in app.extensions
    for _ in range(30):
        assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {ACME}"}).status_code == 200


# ------------------------------------------------------------------ daily caps


@pytest.mark.parametrize("limits_settings", [{"TENANT_DAILY_IMAGES": "5"}], indirect=True)
def test_a_tenant_over_its_daily_images_gets_429_until_midnight(api: FlaskClient) -> None:
    first = post_job(api, ACME, 4, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 202

    answer = post_job(api, ACME, 2)

    body = assert_limited(answer, "daily_image_cap")
    assert body["message"].startswith("daily image cap reached: tenant acme has 4 of 5 images")
    assert_waits_to_midnight(answer)
    # The replay of a job already made is answered; another tenant still has its own cap.
    replay = post_job(api, ACME, 4, **{"Idempotency-Key": "order-1"})
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (200, "true")
    assert replay.get_json()["id"] == first.get_json()["id"]
    assert post_job(api, ACME, 1).status_code == 202
    assert post_job(api, GLOBEX, 5).status_code == 202


@pytest.mark.parametrize("limits_settings", [{"TENANT_DAILY_SPEND_USD": "0.2"}], indirect=True)
def test_a_tenant_over_its_daily_spend_gets_429_until_midnight(api: FlaskClient) -> None:
    assert post_job(api, ACME, 2).status_code == 202  # $0.14

    answer = post_job(api, ACME, 1)  # $0.07 more would make $0.21

    body = assert_limited(answer, "daily_spend_cap")
    assert body["message"].startswith(
        "daily spend cap reached: tenant acme estimated $0.14 of $0.20"
    )
    assert_waits_to_midnight(answer)
    assert post_job(api, GLOBEX, 2).status_code == 202


@pytest.mark.parametrize("limits_settings", [{"GLOBAL_DAILY_SPEND_USD": "0.3"}], indirect=True)
def test_every_tenant_together_over_the_global_spend_gets_429_until_midnight(
    api: FlaskClient,
) -> None:
    assert post_job(api, ACME, 3).status_code == 202  # $0.21

    answer = post_job(api, GLOBEX, 2)  # $0.14 more would make $0.35

    body = assert_limited(answer, "global_spend_cap")
    assert body["message"].startswith(
        "global daily spend cap reached: all tenants together estimated $0.21 of $0.30"
    )
    assert_waits_to_midnight(answer)
    assert post_job(api, GLOBEX, 1).status_code == 202  # $0.28 still fits
