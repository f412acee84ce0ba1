"""Tracing: OpenTelemetry spans of every process, off unless the standard OTEL_* settings ask.

On when OTEL_TRACES_EXPORTER names an exporter other than `none`, or, with it unset, when
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set; never when
OTEL_SDK_DISABLED is `true`. Off, nothing is instrumented and the helpers here return at once.

The use cases mark their work with `job_span` (a span of ours whose job attributes every span
started inside it inherits: the Celery publish, the httpx request to Runware, the S3 calls) and
`annotate` (attributes learnt on the way). No span attribute carries a URL's query string:
webhook URLs carry their token there and presigned URLs their signature (docs/tracing.md).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pipeline.config import SettingsError

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

P = ParamSpec("P")
R = TypeVar("R")

# The default service.name of each process (OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES win).
RECEIVER = "imagine-receiver"
WORKER = "imagine-worker"
BEAT = "imagine-beat"

PREFIX = "imagine."
# Probes and scrapes every few seconds would bury the requests worth reading.
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics"
# Attributes the instrumentations fill with a URL, a target (path and query) or a query alone.
URL_ATTRIBUTES = frozenset({"http.url", "url.full", "http.target"})
QUERY_ATTRIBUTES = frozenset({"url.query"})
REDACTED = "REDACTED"
# An http(s) URL with a query, inside a longer text.
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>]+)\?[^\s#'\"<>]*")

_JOB = otel_context.create_key("imagine-job")
_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_instrumentors: list[Any] = []


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* settings ask for traces (the rule in this module's docstring)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(env)
    if names is not None:
        return bool(names)
    return any(
        env.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def active() -> bool:
    """Whether this process records spans."""
    return _tracer is not None


def _exporter_names(env: Mapping[str, str]) -> list[str] | None:
    """OTEL_TRACES_EXPORTER's names without `none`; None when it is unset."""
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        return None
    return [name for name in (part.strip() for part in raw.split(",")) if name and name != "none"]


OTLP_NAMES = frozenset({"otlp", "otlp_proto_http"})


def check_settings(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, naming the variable, an exporter or a protocol this deployment cannot run: a
    process checks at its start, before it forks the children that start tracing."""
    env = os.environ if environ is None else environ
    for name in _exporter_names(env) or ["otlp"]:
        if name not in OTLP_NAMES | {"console"}:
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER names {name!r}: this deployment exports traces with "
                "otlp (OTLP over HTTP/protobuf) or console"
            )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise SettingsError(
                    f"{variable} is {protocol!r}: only the OTLP HTTP/protobuf exporter is "
                    "installed; use http/protobuf (the collector's port 4318)"
                )
            return


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (default `otlp`: OTLP over HTTP/protobuf, whose
    endpoint, headers, timeout and compression the exporter reads from OTEL_EXPORTER_OTLP_*;
    `console`: one JSON line per span on standard output)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    env = os.environ if environ is None else environ
    check_settings(env)
    return [
        OTLPSpanExporter()
        if name in OTLP_NAMES
        else ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)
        for name in _exporter_names(env) or ["otlp"]
    ]


def resource(service_name: str) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK reads them; `service_name`
    only when neither names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def setup(service_name: str, *, exporter: SpanExporter | None = None) -> bool:
    """Start tracing in this process when the OTEL_* settings ask, once; whether it is on.

    Sampling (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), batching (OTEL_BSP_*), limits
    and propagators are the SDK's own settings. `exporter` (tests, embedding) turns tracing on
    whatever the settings say and receives each span as it ends."""
    global _provider, _tracer
    with _lock:
        if _provider is not None:
            return True
        if exporter is None and not enabled():
            return False
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        processors = (
            [SimpleSpanProcessor(exporter)]
            if exporter is not None
            else [BatchSpanProcessor(each) for each in exporters_from_env()]
        )
        provider = TracerProvider(resource=resource(service_name))
        # First, so the exporting processors see the job attributes.
        provider.add_span_processor(job_span_processor())
        for processor in processors:
            provider.add_span_processor(scrubbing(processor))
        # The global provider serves what was instrumented before this ran (the receiver's
        # Flask app under gunicorn); set once per process, so a second setup (tests) keeps
        # the first there and hands its own provider to everything it instruments.
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            trace.set_tracer_provider(provider)
        _instrument(provider)
        _provider = provider
        _tracer = provider.get_tracer(__name__)
        return True


def shutdown() -> None:
    """Export what is left and stop: the libraries are uninstrumented (tests; a process's own
    exit flushes through the SDK's exit hook)."""
    global _provider, _tracer
    with _lock:
        if _provider is None:
            return
        for instrumentor in _instrumentors:
            instrumentor.uninstrument()
        _instrumentors.clear()
        _provider.shutdown()
        _provider = None
        _tracer = None


def flush(**_: Any) -> None:
    """Export the spans still queued (a worker child about to exit)."""
    if _provider is not None:
        _provider.force_flush()


def instrumentation(name: str) -> Any:
    """opentelemetry.instrumentation.<name>: the Flask, Celery and botocore ones annotate little
    of their classes, and are read as Any, like Celery itself."""
    return importlib.import_module(f"opentelemetry.instrumentation.{name}")


def _instrument(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (
        HTTPXClientInstrumentor(),
        instrumentation("botocore").BotocoreInstrumentor(),
        RedisInstrumentor(),
        celery_instrumentor(),
    ):
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)


# ------------------------------------------------------------------ processes


def trace_receiver(app: Flask) -> None:
    """Trace the receiver's requests and what they call. Under gunicorn the SDK starts in each
    worker from `post_worker_init` (webhooks/gunicorn_conf.py), once gevent has patched it:
    its export thread must not be made before the fork nor before the patch. Elsewhere (the
    development server, tests) it starts here."""
    if not enabled() and _provider is None:
        return
    check_settings()
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        setup(RECEIVER)
    excluded = None  # the instrumentation reads OTEL_PYTHON_(FLASK_)EXCLUDED_URLS itself
    if not (
        os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS")
        or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    ):
        excluded = DEFAULT_EXCLUDED_URLS
    # Without a provider yet (gunicorn), the global one serves once post_worker_init sets it.
    instrumentation("flask").FlaskInstrumentor.instrument_app(
        app, excluded_urls=excluded, tracer_provider=_provider
    )


def trace_celery_processes() -> None:
    """Start tracing in the Celery processes this app runs: each prefork child of a worker (its
    export thread made in the child), a worker of another pool, and beat."""
    if not enabled():
        return  # off: not even a signal handler
    check_settings()
    from celery import signals

    signals.worker_process_init.connect(_start_worker_child, weak=False)
    signals.worker_process_shutdown.connect(flush, weak=False)
    signals.worker_init.connect(_start_worker_without_children, weak=False)
    signals.beat_init.connect(_start_beat, weak=False)


def _start_worker_child(**_: Any) -> None:
    setup(WORKER)


def _start_worker_without_children(sender: Any = None, **_: Any) -> None:
    # A prefork worker's main process only hands messages to its children, which trace them.
    pool = getattr(sender, "pool_cls", "prefork")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in name:
        setup(WORKER)


def _start_beat(**_: Any) -> None:
    setup(BEAT)


def celery_instrumentor() -> Any:
    """Celery's instrumentation, keeping the publish span of a task sent by name.

    Its publish hooks find the task in the sending process's registry, to hand the span from
    `before_task_publish` to `after_task_publish`; the receiver, the CLI and beat send tasks by
    name without defining them, and then the span is left open and current for the rest of the
    request. A stand-in per task name holds it instead."""
    celery_utils = instrumentation("celery.utils")

    stand_ins: dict[str, _SentByName] = {}

    def with_stand_in(kwargs: dict[str, Any]) -> dict[str, Any]:
        sender = kwargs.get("sender")
        if isinstance(sender, str) and celery_utils.retrieve_task_from_sender(kwargs) is None:
            return {**kwargs, "sender": stand_ins.setdefault(sender, _SentByName(sender))}
        return kwargs

    class Instrumentor(instrumentation("celery").CeleryInstrumentor):  # type: ignore[misc]
        def _trace_before_publish(self, *args: Any, **kwargs: Any) -> None:
            super()._trace_before_publish(*args, **with_stand_in(kwargs))

        def _trace_after_publish(self, *args: Any, **kwargs: Any) -> None:
            super()._trace_after_publish(*args, **with_stand_in(kwargs))

    return Instrumentor()


class _SentByName:
    """Holds the publish span of a task this process sends by name only."""

    def __init__(self, name: str) -> None:
        self.name = name


# ------------------------------------------------------------------ the job's attributes


def _attributes(**values: Any) -> dict[str, Any]:
    """imagine.<name> for each value given; a sequence of one is that value, of several an
    array under imagine.<name>s (a submit of several images)."""
    attributes: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        if isinstance(value, Sequence) and not isinstance(value, str):
            items = [item for item in value if item is not None and item != ""]
            if len(items) == 1:
                attributes[PREFIX + name] = items[0]
            elif items:
                attributes[f"{PREFIX}{name}s"] = items
            continue
        attributes[PREFIX + name] = value
    return attributes


@dataclass
class _Scope:
    """A `job_scope`'s attributes, and the span it started in (the HTTP request, the Celery
    task), which gets them too, so each trace's first span names the job."""

    attributes: dict[str, Any]
    outer: trace.Span


def annotate(
    *,
    job_id: str | None = None,
    task_uuid: str | Sequence[str] | None = None,
    slot: int | Sequence[int] | None = None,
    tenant: str | None = None,
) -> None:
    """Put what the use case learnt on the current span, on the span the current `job_scope`
    started in, and on every span started after it inside that scope. Nothing when tracing is
    off."""
    if _tracer is None:
        return
    attributes = _attributes(job_id=job_id, task_uuid=task_uuid, slot=slot, tenant=tenant)
    trace.get_current_span().set_attributes(attributes)
    scope = otel_context.get_value(_JOB)
    if isinstance(scope, _Scope):
        scope.attributes.update(attributes)
        scope.outer.set_attributes(attributes)


@contextmanager
def job_scope(name: str, **values: Any) -> Iterator[None]:
    """A span `name` of ours; the job attributes (`job_id`, `task_uuid`, `slot`, `tenant`) it
    and `annotate` give are set on every span started inside it and on the span it started in."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    inherited = otel_context.get_value(_JOB)
    given = _attributes(**values)
    attributes = {**(inherited.attributes if isinstance(inherited, _Scope) else {}), **given}
    outer = trace.get_current_span()
    outer.set_attributes(given)
    token = otel_context.attach(otel_context.set_value(_JOB, _Scope(attributes, outer)))
    try:
        # Exceptions are recorded by type only: a message may quote what a span must not hold.
        with tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                raise
    finally:
        otel_context.detach(token)


def job_span(name: str, **arguments: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated use case in `job_scope(name)`; `arguments` maps each job attribute to
    the parameter that holds it (`job_id="job_id"`). Off, one check before the call."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return function(*args, **kwargs)
            bound = signature.bind_partial(*args, **kwargs).arguments
            values = {field: bound.get(parameter) for field, parameter in arguments.items()}
            with job_scope(name, **values):
                result = function(*args, **kwargs)
            return result

        return traced

    return decorate


def job_span_processor() -> SpanProcessor:
    """The processor that gives each span, at its start, the job attributes of the `job_scope`
    it starts in."""
    from opentelemetry.sdk.trace import SpanProcessor

    class JobSpanProcessor(SpanProcessor):
        def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
            scope = otel_context.get_value(_JOB, parent_context)
            if isinstance(scope, _Scope) and scope.attributes:
                span.set_attributes(scope.attributes)

    return JobSpanProcessor()


def scrubbing(processor: SpanProcessor) -> SpanProcessor:
    """`processor` handed each ended span without a URL query string in its attributes.

    At the end, not the start: the instrumentations set some attributes again after a span
    started (Flask sets its request's target twice)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Scrubbing(SpanProcessor):
        def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
            processor.on_start(span, parent_context=parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            processor.on_end(scrubbed(span))

        def shutdown(self) -> None:
            processor.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return processor.force_flush(timeout_millis)

    return Scrubbing()


def scrubbed_value(key: str, value: object) -> object:
    """An attribute's value with no URL query string: a URL attribute cut at `?`, a query
    REDACTED, and in any other text (an exception's message) each http(s) URL's query cut."""
    if not isinstance(value, str):
        return value
    if key in QUERY_ATTRIBUTES:
        return REDACTED
    if key in URL_ATTRIBUTES:
        return value.split("?", 1)[0]
    return _URL_QUERY.sub(r"\1", value) if "?" in value else value


def _scrubbed_attributes(attributes: Mapping[str, object] | None) -> dict[str, object]:
    return {key: scrubbed_value(key, value) for key, value in (attributes or {}).items()}


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """The span itself when nothing in it holds a URL's query, else a copy without them."""
    from opentelemetry.sdk.trace import Event, ReadableSpan

    attributes = _scrubbed_attributes(span.attributes)
    events = [
        Event(event.name, _scrubbed_attributes(event.attributes), event.timestamp)  # type: ignore[arg-type]
        for event in span.events
    ]
    if attributes == dict(span.attributes or {}) and all(
        dict(clean.attributes or {}) == dict(event.attributes or {})
        for clean, event in zip(events, span.events, strict=True)
    ):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,  # type: ignore[arg-type]  # the same values, or shorter strings
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
