"""One job traced in one process: the jobs API enqueues it on the Redis broker, Celery's request
machinery runs the message as a worker does and submits to the emulator over HTTP, the
emulator's webhook comes back through the receiver, the image is stored in S3 (moto); every
span goes to an in-memory exporter."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from celery.worker.request import Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pipeline import tracing
from pipeline.config import Settings
from pipeline.dispatch import SUBMIT_QUEUE, create_celery
from pipeline.services import JobService
from webhooks.app import create_app
from workers.base import PipelineTask

pytestmark = pytest.mark.integration

API_KEY = "key-of-acme-tracing-0001"
SECRET = "tracing-webhook-secret-0001"
PROMPT = "a lighthouse at dawn, traced end to end"
SECRETS_IN_URLS = ("token=", "X-Amz-Signature", "X-Amz-Credential")


@dataclass
class WebhookSink:
    """Where the emulator delivers webhooks (PUBLIC_BASE_URL): each POST is recorded, path with
    its query and body, and answered 200, so the test hands it to the receiver itself."""

    url: str
    received: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, task_uuid: str, timeout: float = 30.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for path, body in self.received:
                    if path.startswith(f"/webhooks/runware/{task_uuid}?"):
                        return path, body
            time.sleep(0.05)
        raise AssertionError(f"no webhook for {task_uuid} within {timeout} s")


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server dispatches on this name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink.lock:
                sink.received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the receiver built in this process, spans kept in memory."""
    for name in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    exporter = InMemorySpanExporter()
    assert tracing.setup(tracing.RECEIVER, exporter=exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
def settings(
    redis_server: str,
    s3_server: str,
    s3_bucket: str,
    emulator: str,
    emulator_api_key: str,
    webhook_sink: WebhookSink,
) -> Iterator[Settings]:
    settings = Settings.from_env(
        {
            # A database of its own: the other suites use 0 to 3.
            "REDIS_URL": f"{redis_server.rsplit('/', 1)[0]}/7",
            "S3_ENDPOINT_URL": s3_server,
            "S3_BUCKET": s3_bucket,
            "S3_PREFIX": "tracing/",
            "RUNWARE_API_KEY": emulator_api_key,
            "RUNWARE_API_URL": f"{emulator}/v1",
            "WEBHOOK_SECRETS": SECRET,
            "PUBLIC_BASE_URL": webhook_sink.url,
            "API_KEYS": f"acme:{API_KEY}",
            "API_RATE_LIMIT": "off",
            "LOG_FORMAT": "text",
        }
    )
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield settings
    client.close()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def imagine(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in attributes(span).items() if k.startswith("imagine.")}


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def every_text(span: ReadableSpan) -> list[str]:
    """Everything a span carries as text: name, attributes, events and their attributes."""
    texts = [span.name, *map(str, attributes(span).values())]
    for event in span.events:
        texts += [event.name, *map(str, (event.attributes or {}).values())]
    return texts


def summary(spans: list[ReadableSpan]) -> str:
    lines = []
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        url = attributes(span).get("url.full") or attributes(span).get("http.url") or ""
        lines.append(
            f"{span.context.trace_id:032x}"[:8]
            + f" {span.kind.name:<8} {span.name:<40} {url} {imagine(span)}"
        )
    return "\n".join(lines)


def test_one_job_s_spans_share_its_job_id_and_task_uuid_and_hold_no_secret(
    spans: InMemorySpanExporter,
    settings: Settings,
    webhook_sink: WebhookSink,
    emulator: str,
    s3_client: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(settings, roles=("webhooks", "api"))
    service: JobService = app.extensions["imagine"]["service"]
    client = app.test_client()

    # Enqueue: the jobs API stores the job and sends its nudge through the Redis broker.
    answer = client.post(
        "/v1/jobs",
        json={"positivePrompt": PROMPT, "width": 1024, "height": 1024},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 202, answer.json
    assert answer.json is not None
    job_id = answer.json["id"]

    # Submit, as a worker runs the message: taken from the broker through the pipeline's own
    # transport (pipeline.broker), executed by Celery's request machinery, whose task_prerun
    # hook continues the trace the message's headers carry.
    monkeypatch.setattr(PipelineTask, "_service", None)  # the worker's, built from `settings`
    worker = create_celery(settings)
    worker.loader.import_default_modules()  # the worker's tasks, as a worker starts
    with worker.connection_for_read() as connection:
        queue = connection.SimpleQueue(SUBMIT_QUEUE)
        message = queue.get(timeout=10)
        headers = dict(message.headers)
        assert headers["task"] == "imagine.submit_job" and job_id in headers["argsrepr"]
        request = Request(message, app=worker, task=worker.tasks["imagine.submit_job"])
        assert request.execute() == "submitted"
        message.ack()
        queue.close()
    task_uuid = service.get_job(job_id).slots[0].task_uuid
    assert task_uuid

    # The emulator renders, PUTs to the presigned URL and posts the webhook; the receiver takes
    # it as it came (path, token and body) and stores the image inline.
    path, body = webhook_sink.wait_for(task_uuid)
    answer = client.post(path, data=body, content_type="application/json")
    assert answer.status_code == 200, answer.json
    assert answer.json is not None and answer.json["results"] == ["received"]
    slot = service.get_job(job_id).slots[0]
    assert slot.state == "stored" and slot.final_key
    stored = s3_client.get_object(Bucket=s3_bucket, Key=slot.final_key)["Body"].read()
    hosted = httpx.get(json.loads(body)["data"][0]["imageURL"], timeout=10)
    assert hosted.status_code == 200 and stored == hosted.content

    finished = list(spans.get_finished_spans())
    print(summary(finished))  # the spans of one job, for a reader of `pytest -s`

    request = one(finished, "POST /v1/jobs")
    enqueue = one(finished, "imagine.enqueue")
    publish = one(finished, "apply_async/imagine.submit_job")
    run = one(finished, "run/imagine.submit_job")
    submit = one(finished, "imagine.submit")
    [runware] = [
        span
        for span in finished
        if span.kind == SpanKind.CLIENT
        and f"{emulator}/v1" in (attributes(span).get("url.full"), attributes(span).get("http.url"))
    ]
    webhook_request = one(finished, "POST /webhooks/runware/<task_uuid>")
    webhook = one(finished, "imagine.webhook")
    store = one(finished, "imagine.store")
    [copy] = [span for span in finished if attributes(span).get("rpc.method") == "CopyObject"]

    # The API request, its message and the submit are one trace; the webhook starts another.
    api_trace = request.context.trace_id
    assert {s.context.trace_id for s in (enqueue, publish, run, submit, runware)} == {api_trace}
    assert headers["traceparent"].split("-")[1] == f"{api_trace:032x}"
    assert {s.context.trace_id for s in (webhook, store, copy)} == {
        webhook_request.context.trace_id
    }
    assert webhook_request.context.trace_id != api_trace
    assert child_of(enqueue, request) and child_of(publish, enqueue)
    assert child_of(run, publish) and child_of(submit, run) and child_of(runware, submit)
    assert child_of(webhook, webhook_request) and child_of(store, webhook)
    assert child_of(copy, store)

    # Linked by their attributes: every step names the job, each after the submit its image,
    # and so does the first span of each process's part (the request, the task run).
    for span in (request, enqueue, publish, run, submit, runware, webhook_request, webhook):
        assert imagine(span)["imagine.job_id"] == job_id, span.name
    for span in (store, copy):
        assert imagine(span)["imagine.job_id"] == job_id, span.name
    for span in (run, submit, runware, webhook_request, webhook, store, copy):
        assert imagine(span)["imagine.task_uuid"] == task_uuid, span.name
    for span in (enqueue, publish, submit, runware, store, copy):
        assert imagine(span)["imagine.tenant"] == "acme", span.name
    assert imagine(store)["imagine.slot"] == imagine(webhook)["imagine.slot"] == 0

    # No span holds a URL's query (webhook token, presigned signature) nor the prompt.
    for span in finished:
        for text in every_text(span):
            assert PROMPT not in text, span.name
            for secret in SECRETS_IN_URLS:
                assert secret not in text, (span.name, text)
    target = attributes(webhook_request).get("http.target") or attributes(webhook_request).get(
        "http.url", ""
    )
    assert target.endswith(f"/webhooks/runware/{task_uuid}"), target
