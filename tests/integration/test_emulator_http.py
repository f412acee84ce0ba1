"""The emulator over real HTTP: PUTs and webhooks to a local receiver, polling, faults, ledger."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from werkzeug.serving import make_server

from infra.emulator import EmulatorConfig, close_app, create_app

pytestmark = pytest.mark.integration

MODEL = "xai:grok-imagine@image-pro"
KEY = "integration-key"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver and PUT sink on one port; answers follow `plans` per path."""

    url: str
    events: list[Received] = field(default_factory=list)
    plans: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status_for(self, path: str) -> int:
        with self.lock:
            plan = self.plans.get(path)
            if not plan:
                return 200
            return plan.pop(0) if len(plan) > 1 else plan[0]

    def record(self, event: Received) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, method: str, prefix: str) -> list[Received]:
        with self.lock:
            return [e for e in self.events if e.method == method and e.path.startswith(prefix)]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _take(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            receiver.record(
                Received(self.command, self.path, dict(self.headers), body, time.monotonic())
            )
            status = receiver.status_for(self.path.split("?")[0])
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = _take  # http.server dispatches on these names
        do_PUT = _take

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    found.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    server.shutdown()
    thread.join(5)
    server.server_close()


@dataclass
class Emulator:
    url: str
    client: httpx.Client

    def submit(self, *tasks: dict[str, Any]) -> httpx.Response:
        return self.client.post(
            f"{self.url}/v1", json=list(tasks), headers={"Authorization": f"Bearer {KEY}"}
        )

    def configure(self, **changes: Any) -> None:
        response = self.client.patch(f"{self.url}/_emulator/config", json=changes)
        assert response.status_code == 200, response.text

    def control(self, path: str) -> Any:
        return self.client.get(f"{self.url}/_emulator/{path}").json()

    def flush(self) -> None:
        body = self.client.post(f"{self.url}/_emulator/flush", json={"timeout_s": 20}).json()
        assert body["idle"], body


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    config = EmulatorConfig(
        api_keys=[KEY], seed=11, webhook_backoff_ms=10, webhook_jitter_ms=0, reorder_hold_ms=300
    )
    app = create_app(config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    with httpx.Client(timeout=30) as client:
        yield Emulator(f"http://127.0.0.1:{server.server_port}", client)
    server.shutdown()
    thread.join(5)
    close_app(app)
    server.server_close()


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        threading.Event().wait(0.05)


def task(receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    task_uuid = str(uuid.uuid4())
    body: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": MODEL,
        "positivePrompt": "a glass city under rain",
        "width": 1024,
        "height": 1024,
        "deliveryMethod": "async",
        "includeCost": True,
        "webhookURL": f"{receiver.url}/hook/{task_uuid}?token=abc",
        "uploadEndpoint": f"{receiver.url}/put/{task_uuid}?X-Amz-Signature=x",
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("order", ["before", "after", "never"])
def test_put_order(emulator: Emulator, receiver: Receiver, order: str) -> None:
    emulator.configure(put_order=order)
    body = task(receiver, outputFormat="WEBP")
    assert emulator.submit(body).status_code == 200
    emulator.flush()
    (hook,) = receiver.of("POST", f"/hook/{body['taskUUID']}")
    puts = receiver.of("PUT", f"/put/{body['taskUUID']}")
    if order == "never":
        assert puts == []
        return
    (put,) = puts
    assert put.headers["Content-Type"] == "image/webp"
    assert (put.at < hook.at) == (order == "before")
    item = hook.json()["data"][0]
    hosted = emulator.client.get(item["imageURL"])
    assert hosted.headers["content-type"] == "image/webp"
    assert put.body == hosted.content
    slot = emulator.control(f"tasks/{body['taskUUID']}")["slots"][0]
    assert (slot["put"]["outcome"], slot["put"]["status"]) == ("ok", 200)


@pytest.mark.parametrize(("envelope", "status_field"), [("wrapped", False), ("flat", True)])
def test_webhook_envelope(
    emulator: Emulator, receiver: Receiver, envelope: str, status_field: bool
) -> None:
    emulator.configure(envelope=envelope, webhook_status_field=status_field)
    body = task(receiver)
    emulator.submit(body)
    emulator.flush()
    (hook,) = receiver.of("POST", f"/hook/{body['taskUUID']}")
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.path.endswith("?token=abc")
    payload = hook.json()
    item = payload["data"][0] if envelope == "wrapped" else payload
    if envelope == "wrapped":
        assert list(payload) == ["data"]
    assert item["taskUUID"] == body["taskUUID"]
    assert item["cost"] == 0.07
    assert ("status" in item) == status_field


@pytest.mark.parametrize(
    ("plan", "statuses", "outcome"),
    [
        ([500], [500, 500, 500, 500], "exhausted"),
        ([500, 503, 200], [500, 503, 200], "delivered"),
    ],
)
def test_webhook_retries(
    emulator: Emulator, receiver: Receiver, plan: list[int], statuses: list[int], outcome: str
) -> None:
    emulator.configure(webhook_attempts=4)
    body = task(receiver)
    receiver.plans[f"/hook/{body['taskUUID']}"] = list(plan)
    emulator.submit(body)
    emulator.flush()
    assert len(receiver.of("POST", f"/hook/{body['taskUUID']}")) == len(statuses)
    slot = emulator.control(f"tasks/{body['taskUUID']}")["slots"][0]
    assert slot["webhookOutcome"] == outcome
    assert [a["status"] for a in slot["webhooks"]] == statuses


def test_error_webhook_placements(emulator: Emulator, receiver: Receiver) -> None:
    first, second = task(receiver), task(receiver)
    for body in (first, second):
        emulator.client.post(
            f"{emulator.url}/_emulator/faults/queue",
            json={"kind": "item_error", "taskUUID": body["taskUUID"], "code": "timeoutProvider"},
        )
    emulator.submit(first)
    emulator.flush()
    emulator.configure(error_placement="item")
    emulator.submit(second)
    emulator.flush()
    (hook,) = receiver.of("POST", f"/hook/{first['taskUUID']}")
    (error,) = hook.json()["errors"]
    assert (error["code"], error["status"], error["taskUUID"]) == (
        "timeoutProvider",
        "error",
        first["taskUUID"],
    )
    (hook,) = receiver.of("POST", f"/hook/{second['taskUUID']}")
    (item,) = hook.json()["data"]
    assert (item["status"], item["error"]["code"]) == ("error", "timeoutProvider")
    assert receiver.of("PUT", "/put/") == []


def test_one_webhook_per_image(emulator: Emulator, receiver: Receiver) -> None:
    body = task(receiver, numberResults=3, outputFormat="PNG", width=1408, height=704)
    emulator.submit(body)
    emulator.flush()
    hooks = receiver.of("POST", f"/hook/{body['taskUUID']}")
    items = [h.json()["data"][0] for h in hooks]
    assert len({i["imageUUID"] for i in items}) == 3
    for item in items:
        assert item["taskUUID"] == body["taskUUID"]
        image = Image.open(io.BytesIO(emulator.client.get(item["imageURL"]).content))
        assert (image.format, image.size) == ("PNG", (1408, 704))
    puts = receiver.of("PUT", f"/put/{body['taskUUID']}")
    assert len(puts) == 3
    for put in puts:
        image = Image.open(io.BytesIO(put.body))
        assert (image.format, image.size) == ("PNG", (1408, 704))


def test_get_response_is_cumulative(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(latency_min_ms=100, latency_max_ms=900, deliveries=False)
    body = task(receiver, numberResults=4)
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue",
        json={
            "kind": "item_error",
            "taskUUID": body["taskUUID"],
            "code": "providerContentPolicyViolation",
        },
    )
    emulator.submit(body)
    poll = {"taskType": "getResponse", "taskUUID": body["taskUUID"]}
    seen: list[list[str]] = []
    first = emulator.submit(poll).json()
    assert [i["status"] for i in first["data"]] == ["processing"] * 4

    def finished() -> dict[str, Any] | None:
        payload = emulator.submit(poll).json()
        seen.append([i["status"] for i in payload["data"]])
        done = [i for i in payload["data"] if i["status"] == "success"]
        return payload if len(done) == 3 and payload.get("errors") else None

    final = wait_for(finished)
    assert final["errors"][0]["code"] == "providerContentPolicyViolation"
    assert final["errors"][0]["status"] == "error"
    assert all(i["cost"] == 0.07 for i in final["data"])
    again = emulator.submit(poll).json()
    assert [i["imageUUID"] for i in again["data"]] == [i["imageUUID"] for i in final["data"]]
    assert all(len(s) in (3, 4) for s in seen)
    assert receiver.events == []


def test_ledger(emulator: Emulator, receiver: Receiver) -> None:
    plain = task(receiver, numberResults=2)
    failed = task(receiver)
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue",
        json={"kind": "item_error", "taskUUID": failed["taskUUID"]},
    )
    emulator.submit(plain, failed)
    emulator.flush()
    ledger = emulator.control("ledger")
    assert ledger["totals"]["count"] == 2
    assert ledger["totals"]["cost"] == pytest.approx(0.14)
    assert sorted(e["index"] for e in ledger["entries"]) == [0, 1]
    assert {e["outcome"] for e in ledger["entries"]} == {"success"}
    emulator.configure(charge_errored_items=True)
    charged = task(receiver)
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue",
        json={"kind": "item_error", "taskUUID": charged["taskUUID"]},
    )
    emulator.submit(charged)
    emulator.flush()
    mine = emulator.client.get(
        f"{emulator.url}/_emulator/ledger", params={"taskUUID": charged["taskUUID"]}
    ).json()
    assert [(e["outcome"], e["cost"]) for e in mine["entries"]] == [("error", 0.07)]
    emulator.client.post(f"{emulator.url}/_emulator/reset")
    assert emulator.control("ledger")["totals"]["count"] == 0


def test_queued_webhook_faults(emulator: Emulator, receiver: Receiver) -> None:
    body = task(receiver, numberResults=3)
    for kind in ("drop_webhook", "duplicate_webhook"):
        emulator.client.post(
            f"{emulator.url}/_emulator/faults/queue",
            json={"kind": kind, "count": 1, "taskUUID": body["taskUUID"]},
        )
    emulator.submit(body)
    emulator.flush()
    hooks = receiver.of("POST", f"/hook/{body['taskUUID']}")
    uuids = [h.json()["data"][0]["imageUUID"] for h in hooks]
    assert len(uuids) == 3 and len(set(uuids)) == 2
    stats = emulator.control("stats")
    assert (stats["webhooks_dropped"], stats["webhooks_duplicated"]) == (1, 1)
    assert len(receiver.of("PUT", f"/put/{body['taskUUID']}")) == 3


def test_reordered_webhook_arrives_after_the_next(emulator: Emulator, receiver: Receiver) -> None:
    emulator.configure(render_workers=4)
    first = task(receiver)
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue",
        json={"kind": "reorder_webhook", "taskUUID": first["taskUUID"]},
    )
    emulator.submit(first)
    wait_for(lambda: emulator.control("stats")["held_webhooks"] == 1)
    second = task(receiver)
    emulator.submit(second)
    emulator.flush()
    order = [e.path.split("/")[2].split("?")[0] for e in receiver.of("POST", "/hook/")]
    assert order == [second["taskUUID"], first["taskUUID"]]


def test_upload_fault_truncates(emulator: Emulator, receiver: Receiver) -> None:
    body = task(receiver)
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue", json={"kind": "upload_fail", "mode": "truncate"}
    )
    emulator.submit(body)
    emulator.flush()
    (put,) = receiver.of("PUT", f"/put/{body['taskUUID']}")
    item = receiver.of("POST", f"/hook/{body['taskUUID']}")[0].json()["data"][0]
    full = emulator.client.get(item["imageURL"]).content
    assert put.body == full[: len(full) // 2]
    slot = emulator.control(f"tasks/{body['taskUUID']}")["slots"][0]
    assert slot["put"]["outcome"] == "fault_truncated"


def test_queued_submit_error(emulator: Emulator, receiver: Receiver) -> None:
    emulator.client.post(
        f"{emulator.url}/_emulator/faults/queue",
        json={"kind": "submit_error", "status": 504, "retry_after_s": 2},
    )
    body = task(receiver)
    refused = emulator.submit(body)
    assert refused.status_code == 504
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["errors"][0]["code"] == "timeoutQueue"
    assert emulator.submit(body).status_code == 200
    emulator.flush()


def test_cli_serves_and_stops_on_sigterm(receiver: Receiver) -> None:
    env = {**os.environ, "EMULATOR_SEED": "3"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--set",
            "envelope=flat",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with httpx.Client(timeout=10) as client:
            config = client.get(f"{url}/_emulator/config").json()
            assert (config["seed"], config["envelope"], config["api_keys"]) == (3, "flat", [KEY])
            body = task(receiver)
            response = client.post(
                f"{url}/v1", json=[{"taskType": "authentication", "apiKey": KEY}, body]
            )
            assert response.status_code == 200
            assert client.post(f"{url}/_emulator/flush", json={"timeout_s": 20}).json()["idle"]
        (hook,) = receiver.of("POST", f"/hook/{body['taskUUID']}")
        assert hook.json()["taskUUID"] == body["taskUUID"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
