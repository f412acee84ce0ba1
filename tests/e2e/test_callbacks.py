"""A job's callback: one signed POST when it ends, verified by the reference `standardwebhooks`
library."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.e2e.conftest import CALLBACK_SECRET, Pipeline

pytestmark = pytest.mark.e2e


class Inbox:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()


@pytest.fixture
def inbox() -> Iterator[tuple[str, Inbox]]:
    box = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with box.lock:
                box.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
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


def test_callback_is_signed_and_describes_the_ended_job(
    stack: Pipeline, inbox: tuple[str, Inbox]
) -> None:
    url, box = inbox
    created = stack.submit(
        {"positivePrompt": "call me back", "resolution": "1K", "callbackURL": url}
    )
    job = stack.wait(created["id"])
    assert job["state"] == "succeeded"
    deadline = time.monotonic() + 30
    while not box.requests:
        assert time.monotonic() < deadline, "no callback arrived"
        time.sleep(0.1)
    headers, body = box.requests[0]
    event = Webhook(CALLBACK_SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(CALLBACK_SECRET).verify(body.replace(b"succeeded", b"failed"), headers)
    assert event["type"] == "job.ended"
    assert event["data"]["id"] == created["id"]
    assert event["data"]["state"] == "succeeded"
    assert event["data"]["manifestKey"] == job["manifestKey"]
