"""The Flask app: authentication before lookup, body limits, roles, one error shape."""

from __future__ import annotations

import pytest

from pipeline.errors import LimitExceeded
from pipeline.signing import webhook_token
from tests.unit.conftest import SECRET, TASK, FakeService, make_client, url

pytestmark = pytest.mark.unit

BODY = {
    "data": [
        {
            "taskType": "imageInference",
            "taskUUID": TASK,
            "imageUUID": "i-1",
            "imageURL": "https://im.runware.ai/image/i-1.jpg",
            "cost": 0.07,
        }
    ]
}


def test_a_good_webhook_is_handed_to_the_use_case_and_answered() -> None:
    service = FakeService()
    answer = make_client(service).post(url(), json=BODY)
    assert answer.status_code == 200
    assert answer.json == {"taskUUID": TASK, "results": ["received"]}
    assert service.accepted == [(TASK, BODY)]


@pytest.mark.parametrize(
    "token", ["wrong", "", webhook_token("x" * 32, TASK), webhook_token(SECRET, "another-task")]
)
def test_a_bad_token_is_refused_before_any_lookup(token: str) -> None:
    service = FakeService()
    answer = make_client(service).post(f"/webhooks/runware/{TASK}?token={token}", json=BODY)
    assert answer.status_code == 401
    assert answer.json is not None and answer.json["code"] == "unauthorized"
    assert service.accepted == []


def test_an_unknown_task_with_a_valid_token_is_404() -> None:
    other = "0b6f2a5e-7d0c-4f6e-9a55-1c1c2b9d5e11"
    answer = make_client(FakeService()).post(url(other), json=BODY)
    assert answer.status_code == 404
    assert set(answer.json or {}) == {"code", "status", "message", "errors"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=utf-8"])
def test_a_webhook_body_is_read_as_json_whatever_plausible_type_it_declares(
    content_type: str | None,
) -> None:
    import json

    service = FakeService()
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = make_client(service).post(url(), data=json.dumps(BODY), headers=headers)
    assert answer.status_code == 200
    assert service.accepted == [(TASK, BODY)]


def test_body_limits_and_media_type() -> None:
    client = make_client(FakeService())
    assert (
        client.post(url(), data="a=1", content_type="application/x-www-form-urlencoded").status_code
        == 415
    )
    assert (
        client.post(
            "/v1/jobs", data="{}", content_type="text/plain", headers={"Authorization": "Bearer k"}
        ).status_code
        == 415
    )
    big = client.post(url(), data="{" + " " * 4096 + "}", content_type="application/json")
    assert big.status_code == 413
    assert big.json is not None and big.json["status"] == 413
    assert client.post(url(), data="{not json", content_type="application/json").status_code == 400


def test_roles_keep_the_api_and_metrics_off_a_public_receiver() -> None:
    client = make_client(FakeService(), roles=("webhooks",))
    assert client.get("/healthz").status_code == 200
    assert client.post(url(), json=BODY).status_code == 200
    for path in ("/v1/jobs", "/metrics", "/v1/openapi.json"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.json is not None and answer.json["code"] == "not_found"


def test_api_without_webhooks() -> None:
    client = make_client(FakeService(), roles=("api",))
    assert client.post(url(), json=BODY).status_code == 404
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/openapi.json").json["openapi"].startswith("3.")  # type: ignore[index]


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown receiver roles"):
        make_client(FakeService(), roles=("webhooks", "admin"))


class LimitedService(FakeService):
    """A service whose every job submission is over a limit."""

    def create_job(self, body: object, tenant: str, key: str | None) -> object:
        raise LimitExceeded(
            "tenant acme reached its daily image cap (5000)",
            code="daily_image_cap",
            retry_after=3600.2,
        )


def test_an_exceeded_limit_answers_429_naming_it_with_retry_after() -> None:
    client = make_client(LimitedService())
    answer = client.post(
        "/v1/jobs", json={"positivePrompt": "x"}, headers={"Authorization": "Bearer k"}
    )
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3601"
    assert answer.json == {
        "code": "daily_image_cap",
        "status": 429,
        "message": "tenant acme reached its daily image cap (5000)",
        "errors": {},
    }
