"""A job's callback: a signed POST when it ends, which the reference `standardwebhooks` library
verifies, retried under the same webhook-id while its receiver is down, each attempt recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline.callback_log import RedisCallbackLog
from pipeline.config import Settings
from tests.e2e.conftest import CALLBACK_SECRET, Pipeline

pytestmark = pytest.mark.e2e


class Inbox:
    """What the receiver got; it answers 503 to the first `down` requests, then 204."""

    def __init__(self, down: int = 1) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.down = down
        self.lock = threading.Lock()


@pytest.fixture
def inbox() -> Iterator[tuple[str, Inbox]]:
    box = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with box.lock:
                box.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if len(box.requests) <= box.down else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", box
    server.shutdown()
    server.server_close()
    thread.join(5)


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_callback_is_verified_by_standard_webhooks_after_a_retry_and_each_attempt_recorded(
    stack: Pipeline, inbox: tuple[str, Inbox]
) -> None:
    url, box = inbox
    created = stack.submit(
        {"positivePrompt": "call me back", "resolution": "1K", "callbackURL": url}
    )
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded"
    # The first attempt meets a 503; the retry comes a few seconds later.
    _poll(lambda: len(box.requests) >= 2, 60, "the retried callback")
    (first_headers, first_body), (headers, body) = box.requests[:2]
    event = Webhook(CALLBACK_SECRET).verify(body, headers)
    assert event["type"] == "job.ended"
    assert event["data"]["id"] == created["id"]
    assert event["data"]["state"] == "succeeded"
    assert event["data"]["manifestKey"] == job["manifestKey"]
    assert headers["webhook-id"] == first_headers["webhook-id"]  # the same event
    first = Webhook(CALLBACK_SECRET).verify(first_body, first_headers)
    # The same event; only its result URLs are signed afresh for each attempt.
    assert (first["timestamp"], first["data"]["id"]) == (event["timestamp"], event["data"]["id"])
    assert event["data"]["manifestURL"] and event["data"]["slots"][0]["url"]
    with pytest.raises(WebhookVerificationError):
        Webhook(CALLBACK_SECRET).verify(body.replace(b"succeeded", b"failed"), headers)

    log = RedisCallbackLog.from_settings(Settings.from_env(stack.env))
    try:
        attempts = _poll(
            lambda: (
                [a for a in log.attempts(created["id"]) if a["outcome"] == "sent"]
                and log.attempts(created["id"])
            ),
            30,
            "the recorded attempts",
        )
    finally:
        log.redis.close()
    assert [(a["outcome"], a["status"]) for a in attempts] == [("retrying", 503), ("sent", 204)]
    assert {a["webhookId"] for a in attempts} == {headers["webhook-id"]}
    assert attempts[0]["nextAttemptAt"] is not None
    assert all(a["durationMs"] >= 0 for a in attempts)
    assert json.loads(body)["data"]["callbackURL"] == url
    # The job view shows the same attempts to the tenant.
    with stack.client() as client:
        shown = client.get(f"/v1/jobs/{created['id']}").json()["callbacks"]
    assert [(a["outcome"], a["status"], a["webhookId"]) for a in shown] == [
        (a["outcome"], a["status"], a["webhookId"]) for a in attempts
    ]
