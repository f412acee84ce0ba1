"""Tracing: off unless the OTEL_* settings ask; a job's attributes on every span inside its job
span; a task sent by name keeps its publish span; no query string in a recorded URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import botocore.client
import httpx
import pytest
import redis
from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pipeline import tracing
from pipeline.config import SettingsError
from tests.unit.conftest import TASK, FakeService, make_client, url

pytestmark = pytest.mark.unit

JOB = "0b8e2d4f-6a1c-4f3e-9d5b-7c9e1f3a5b7d"
PRESIGNED = (
    "http://s3.test/imagine/staging/j/t?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=k%2F20260101&X-Amz-Signature=abc123&X-Amz-Expires=900"
)
WEBHOOK_URL = f"https://hooks.test/webhooks/runware/{TASK}?token=secret-token"


@pytest.fixture(autouse=True)
def _no_otel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say which OTEL_* settings they run with; none come from the shell."""
    for name in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, each span handed to an in-memory exporter as it ends."""
    exporter = InMemorySpanExporter()
    assert tracing.setup(tracing.WORKER, exporter=exporter)
    yield exporter
    tracing.shutdown()


def attribute_text(span: ReadableSpan) -> str:
    return " ".join(f"{key}={value}" for key, value in (span.attributes or {}).items())


def is_wrapped(function: Any) -> bool:
    """Whether an instrumentation wrapped it (botocore's own decorator leaves __wrapped__)."""
    return type(function).__name__ in {"FunctionWrapper", "BoundFunctionWrapper"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "imagine"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_tracing_is_on_only_when_the_otel_settings_ask_for_it(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.enabled(environ) is on


def test_off_nothing_is_instrumented_and_the_helpers_do_nothing() -> None:
    assert tracing.setup(tracing.WORKER) is False
    assert not tracing.active()
    assert not is_wrapped(httpx.HTTPTransport.handle_request)
    assert not is_wrapped(botocore.client.BaseClient._make_api_call)
    assert not is_wrapped(redis.Redis.execute_command)

    @tracing.job_span("imagine.submit", job_id="job_id")
    def use_case(job_id: str) -> trace.Span:
        tracing.annotate(job_id=job_id, task_uuid=TASK)
        return trace.get_current_span()

    assert not use_case(JOB).is_recording()
    # The receiver's app is left as it was built.
    app: Any = make_client(FakeService()).application
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)


def test_on_from_the_settings_it_instruments_the_libraries_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    try:
        assert tracing.setup(tracing.WORKER) is True
        assert tracing.active()
        assert is_wrapped(httpx.HTTPTransport.handle_request)
        assert is_wrapped(botocore.client.BaseClient._make_api_call)
        assert is_wrapped(redis.Redis.execute_command)
    finally:
        tracing.shutdown()
    assert not tracing.active()
    assert not is_wrapped(httpx.HTTPTransport.handle_request)


def test_the_service_name_defaults_per_process_and_yields_to_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tracing.resource(tracing.BEAT).attributes["service.name"] == "imagine-beat"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    worker = tracing.resource(tracing.WORKER).attributes
    assert (worker["service.name"], worker["deployment.environment"]) == (
        "imagine-worker",
        "staging",
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "imagine-eu")
    assert tracing.resource(tracing.RECEIVER).attributes["service.name"] == "imagine-eu"


def test_an_exporter_this_deployment_cannot_run_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.exporters_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    [otlp] = tracing.exporters_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    [console] = tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console,none"})
    assert (type(otlp).__name__, type(console).__name__) == (
        "OTLPSpanExporter",
        "ConsoleSpanExporter",
    )
    otlp.shutdown()


def test_every_span_inside_a_job_span_carries_the_job_and_what_was_learnt_on_the_way(
    spans: InMemorySpanExporter,
) -> None:
    @tracing.job_span("imagine.submit", job_id="job_id")
    def use_case(job_id: str, *, probe: bool = False) -> None:
        with tracing.job_scope("imagine.early"):
            pass
        tracing.annotate(tenant="acme", task_uuid=[TASK], slot=[0])
        with tracing.job_scope("imagine.late"):
            pass

    use_case(JOB)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    outer = by_name["imagine.submit"]
    assert outer.attributes == {
        "imagine.job_id": JOB,
        "imagine.tenant": "acme",
        "imagine.task_uuid": TASK,
        "imagine.slot": 0,
    }
    assert by_name["imagine.early"].attributes == {"imagine.job_id": JOB}
    assert by_name["imagine.late"].attributes == outer.attributes
    for inner in ("imagine.early", "imagine.late"):
        parent = by_name[inner].parent
        assert parent is not None and parent.span_id == outer.context.span_id


def test_several_images_are_named_as_arrays_and_a_failure_by_its_type_only(
    spans: InMemorySpanExporter,
) -> None:
    other = str(uuid.uuid4())
    with pytest.raises(ValueError), tracing.job_scope("imagine.submit", job_id=JOB):
        tracing.annotate(task_uuid=[TASK, other], slot=[0, 1])
        raise ValueError(f"refused {WEBHOOK_URL}")
    [span] = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["imagine.task_uuids"] == (TASK, other)
    assert span.attributes["imagine.slots"] == (0, 1)
    assert span.attributes["error.type"] == "ValueError"
    assert span.status.description == "ValueError"
    assert not span.events  # the message, which may quote a URL, is not recorded


def test_a_task_sent_by_name_is_one_ended_span_of_the_job_with_the_trace_in_its_headers(
    spans: InMemorySpanExporter,
) -> None:
    """The receiver sends tasks it does not define: the publish span still ends, is the job's,
    and the message carries the trace to the worker."""
    app = Celery("tracing-test", broker="memory://")
    queue = f"tracing-{uuid.uuid4().hex}"
    with tracing.job_scope("imagine.enqueue", job_id=JOB, tenant="acme"):
        app.send_task("imagine.not_defined_here", args=[JOB], queue=queue)
        # Nothing left open and current after the message went.
        assert trace.get_current_span().name == "imagine.enqueue"  # type: ignore[attr-defined]
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue(queue, no_ack=True).get(timeout=5)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    publish = by_name["apply_async/imagine.not_defined_here"]
    enqueue = by_name["imagine.enqueue"]
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == enqueue.context.span_id
    assert publish.attributes is not None
    assert (publish.attributes["imagine.job_id"], publish.attributes["imagine.tenant"]) == (
        JOB,
        "acme",
    )
    _version, trace_id, span_id, _flags = message.headers["traceparent"].split("-")
    assert trace_id == format(publish.context.trace_id, "032x")
    assert span_id == format(publish.context.span_id, "016x")


def test_a_webhook_request_s_token_never_reaches_its_span(spans: InMemorySpanExporter) -> None:
    body = {"data": [{"taskType": "imageInference", "taskUUID": TASK, "imageUUID": "i-1"}]}
    answer = make_client(FakeService()).post(url(), json=body)
    assert answer.status_code == 200
    [server] = [span for span in spans.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/webhooks/runware/<task_uuid>"
    assert "token" not in attribute_text(server)
    assert "token" not in server.name


def test_urls_the_http_client_records_lose_their_query() -> None:
    """Presigned URLs carry their signature, webhook URLs their token, in the query."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracing.scrubbing(SimpleSpanProcessor(exporter)))
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    try:
        client.put(PRESIGNED, content=b"image")
        client.post(WEBHOOK_URL, json={})
    finally:
        HTTPXClientInstrumentor.uninstrument_client(client)
        client.close()
    put, post = exporter.get_finished_spans()
    recorded = attribute_text(put) + attribute_text(post)
    assert "http://s3.test/imagine/staging/j/t" in recorded
    assert f"https://hooks.test/webhooks/runware/{TASK}" in recorded
    for secret in ("X-Amz-Signature", "abc123", "token", "secret-token", "?"):
        assert secret not in recorded


def test_a_url_quoted_in_an_exception_s_message_loses_its_query() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracing.scrubbing(SimpleSpanProcessor(exporter)))
    with provider.get_tracer(__name__).start_as_current_span("fetch") as span:
        span.set_attribute("note", f"redirected to {PRESIGNED} then stopped")
        span.record_exception(ValueError(f"Client error '403' for url '{WEBHOOK_URL}'"))
    [ended] = exporter.get_finished_spans()
    [event] = ended.events
    assert event.attributes is not None and ended.attributes is not None
    message = str(event.attributes["exception.message"])
    assert message == f"Client error '403' for url 'https://hooks.test/webhooks/runware/{TASK}'"
    assert (
        ended.attributes["note"] == "redirected to http://s3.test/imagine/staging/j/t then stopped"
    )
    assert ended.context == span.get_span_context()


def test_under_gunicorn_the_receiver_leaves_the_start_to_the_worker_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app is instrumented when built; the SDK and its export thread start in
    post_worker_init, after gevent patched the worker."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")
    app: Any = make_client(FakeService()).application
    assert app._is_instrumented_by_opentelemetry
    assert not tracing.active()
    try:
        assert tracing.setup(tracing.RECEIVER)  # what post_worker_init does
        assert tracing.active()
    finally:
        tracing.shutdown()


def test_celery_processes_start_tracing_only_when_asked_and_refuse_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery import signals

    def connected() -> bool:
        return any(
            receiver is tracing._start_worker_child
            for _key, receiver in signals.worker_process_init.receivers
        )

    tracing.trace_celery_processes()
    assert not connected()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        tracing.trace_celery_processes()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    tracing.trace_celery_processes()
    try:
        assert connected()
    finally:
        for signal, handler in (
            (signals.worker_process_init, tracing._start_worker_child),
            (signals.worker_process_shutdown, tracing.flush),
            (signals.worker_init, tracing._start_worker_without_children),
            (signals.beat_init, tracing._start_beat),
        ):
            signal.disconnect(handler)
