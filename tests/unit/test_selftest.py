"""The webhook path's self-test against the receiver app and against what else may answer."""

from __future__ import annotations

import httpx
import pytest

from pipeline.config import Settings
from pipeline.selftest import probe_webhook_path
from tests.unit.conftest import SECRET, FakeService, make_client

pytestmark = pytest.mark.unit


def settings(public: str = "http://receiver.test", secret: str = SECRET) -> Settings:
    return Settings.from_env({"WEBHOOK_SECRETS": secret, "PUBLIC_BASE_URL": public})


def receiver() -> httpx.Client:
    app = make_client(FakeService()).application
    return httpx.Client(transport=httpx.WSGITransport(app=app))


def answering(handler: httpx.MockTransport) -> httpx.Client:
    return httpx.Client(transport=handler)


def test_the_receiver_answers_its_self_test() -> None:
    result = probe_webhook_path(settings(), http=receiver())
    assert result.ok and result.outcome == "ok"
    assert result.url.startswith("http://receiver.test/webhooks/runware/selftest-")
    assert "token" not in result.line()


def test_a_receiver_with_other_secrets_is_named_as_such() -> None:
    result = probe_webhook_path(settings(secret="o" * 32), http=receiver())
    assert (result.ok, result.outcome) == (False, "unauthorized")
    assert "WEBHOOK_SECRETS differ" in result.line()


def test_nothing_listening_at_port_80_is_named_with_the_url_tried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = probe_webhook_path(
        settings("http://localhost"), http=answering(httpx.MockTransport(refuse))
    )
    assert result.outcome == "refused"
    line = result.line()
    assert "FAILED: POST http://localhost/webhooks/runware/selftest-" in line
    assert "localhost:80 (PUBLIC_BASE_URL names no port)" in line
    assert "Connection refused" in line and "token" not in line


def test_another_service_answering_is_not_taken_for_the_receiver() -> None:
    def other(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True}, headers={"Server": "nginx"})

    result = probe_webhook_path(settings(), http=answering(httpx.MockTransport(other)))
    assert result.outcome == "wrong_service"
    assert "HTTP 200 (nginx)" in result.line()


def test_no_answer_in_time_is_a_timeout() -> None:
    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result = probe_webhook_path(settings(), http=answering(httpx.MockTransport(silent)))
    assert result.outcome == "timeout" and "no answer from receiver.test:80" in result.line()
