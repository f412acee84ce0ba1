"""Views: authenticate, load, dedupe, act, answer; nothing else."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request
from marshmallow import Schema, ValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from webargs.flaskparser import FlaskParser
from werkzeug import Request
from werkzeug.wrappers import Response as WerkzeugResponse

from pipeline import metrics as pipeline_metrics
from pipeline.config import Settings
from pipeline.dependencies import readiness
from pipeline.enqueue import is_job_id
from pipeline.errors import BodyInvalid, NotFound, RequestInvalid, Unauthorized
from pipeline.logs import add_log_context
from pipeline.models import JobState
from pipeline.schemas import IDEMPOTENCY_KEY
from pipeline.selftest import is_selftest_id, selftest_answer
from pipeline.services import JobService
from pipeline.signing import verify_webhook_token
from webhooks.limits import MAX_JSON_DEPTH, nests_too_deep
from webhooks.schemas import (
    ErrorSchema,
    IdempotencyHeaderSchema,
    JobPageSchema,
    JobViewSchema,
    ListQuerySchema,
    StatsQuerySchema,
    StatsSchema,
)

View = TypeVar("View", bound=Callable[..., Any])

if TYPE_CHECKING:

    class DocumentedBlueprint(Blueprint):
        """The parts of flask-smorest's Blueprint the views use, typed: the package ships no
        type information."""

        ARGUMENTS_PARSER: FlaskParser

        def __init__(
            self, name: str, import_name: str, *, description: str = "", **options: Any
        ) -> None: ...

        def arguments(self, schema: Any, **options: Any) -> Callable[[View], View]: ...

        def response(
            self, status_code: int, schema: Any = None, **options: Any
        ) -> Callable[[View], View]: ...

        def alt_response(self, status_code: int, **options: Any) -> Callable[[View], View]: ...

        def doc(self, **doc: Any) -> Callable[[View], View]: ...

else:
    from flask_smorest import Blueprint as DocumentedBlueprint

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)
receiver = Blueprint("receiver", __name__)
metrics = Blueprint("metrics", __name__)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["imagine"]["settings"]
    return settings


def _service(inline: bool = False) -> JobService:
    service: JobService = current_app.extensions["imagine"]["inline" if inline else "service"]
    return service


# Runware does not document the headers of its webhook POST: besides JSON, accept a body sent
# as text/plain or with no Content-Type, as long as it parses as JSON.
LENIENT_WEBHOOK_TYPES = {"", "text/plain"}


def _json_body(lenient: bool = False) -> Any:
    if not request.is_json and not (lenient and request.mimetype in LENIENT_WEBHOOK_TYPES):
        from werkzeug.exceptions import UnsupportedMediaType

        raise UnsupportedMediaType("the body must be application/json")
    raw = request.get_data(cache=True)
    # Python's parser recurses per level: a deep body would end in RecursionError (a 500).
    if nests_too_deep(raw):
        raise BodyInvalid(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    body = request.get_json(force=True, silent=True)
    if body is None and raw.strip() != b"null":
        raise BodyInvalid("the body is not valid UTF-8 JSON")
    return body


def _job_id(raw: str) -> str:
    """A job id from the URL: a UUID, or a 404 before it gets anywhere near the store."""
    if not is_job_id(raw):
        raise NotFound(f"no job {raw[:64]!r}: job ids are UUIDs")
    return raw


def _idempotency_header() -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is not None and not IDEMPOTENCY_KEY.fullmatch(value):
        raise RequestInvalid(
            "the Idempotency-Key header is invalid",
            {"Idempotency-Key": ["must be 1-255 printable ASCII characters without spaces"]},
        )
    return value


# ---------------------------------------------------------------- health
@health.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


READYZ_S3_TIMEOUT = 0.5


@health.get("/readyz")
def readyz() -> Any:
    service = _service(inline=True)  # short S3 timeouts: a probe must answer quickly
    settings = _settings()
    checks: dict[str, str] = {}
    try:
        service.store.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = readiness(exc, settings)
    # One S3 call bounded well under a second (the inline timeouts are for promotions).
    storage_for = service.context.inline_storage
    storage = storage_for(READYZ_S3_TIMEOUT) if storage_for else service.storage
    try:
        storage.check()
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = readiness(exc, settings)
    ready = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), (
        200 if ready else 503
    )


# ---------------------------------------------------------------- Runware webhooks
def counts_refusals(view: View) -> View:
    """Count a webhook the view refuses (it raises: 401, 404, 400, 413, 415, 500) by why; the
    view counts each result of a webhook it accepts. Free on the accepted path."""

    @functools.wraps(view)
    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except Exception as exc:
            status = getattr(exc, "status", None) or getattr(exc, "code", None)
            pipeline_metrics.webhook_refused(status if isinstance(status, int) else None)
            raise

    return counted  # type: ignore[return-value]


@receiver.post("/webhooks/runware/<task_uuid>")
@counts_refusals
def runware_webhook(task_uuid: str) -> Any:
    settings = _settings()
    token = request.args.get("token")
    if not verify_webhook_token(settings.require_webhook_secrets(), task_uuid, token):
        raise Unauthorized("bad or missing webhook token")
    if is_selftest_id(task_uuid):
        # A start's self-test of the webhook path, signed like a webhook (pipeline.selftest):
        # its body is not read and no job or Redis key is touched.
        return jsonify(selftest_answer(task_uuid))
    if not is_job_id(task_uuid):  # the pipeline mints every taskUUID as a canonical UUID
        raise NotFound(f"no task {task_uuid[:64]!r}")
    body = _json_body(lenient=True)
    # Short S3 timeouts: the answer never waits on a retry loop; a worker takes over.
    outcomes = _service(inline=True).receive_webhook(task_uuid, body)
    for outcome in outcomes:
        pipeline_metrics.webhook(outcome.outcome)
    return jsonify({"taskUUID": task_uuid, "results": [outcome.outcome for outcome in outcomes]})


# ---------------------------------------------------------------- jobs API
class QueryParser(FlaskParser):
    """Loads query parameters with the schema's own `unknown` (RAISE: an unknown parameter is a
    422, as a misspelt filter must not silently list everything) and reports a refusal as the
    one error shape, naming each field."""

    def __init__(self) -> None:
        super().__init__(unknown=None)

    def handle_error(
        self,
        error: ValidationError,
        req: Request,
        schema: Schema,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        # webargs files the messages under the location they came from: {"query": {...}}.
        filed = error.messages if isinstance(error.messages, dict) else {}
        location, messages = next(iter(filed.items()), ("request", error.messages))
        if not isinstance(messages, dict):
            messages = {"_schema": messages}
        raise RequestInvalid(f"the {location} is invalid", messages)


api = DocumentedBlueprint(
    "api",
    __name__,
    url_prefix="/v1",
    description="Create jobs, follow them, cancel them and download their images.",
)
api.ARGUMENTS_PARSER = QueryParser()

JOB_ID = {
    "in": "path",
    "name": "job_id",
    "description": "The job's id, as `POST /v1/jobs` answered it.",
    "schema": {"type": "string", "format": "uuid"},
}
LOCATION = {
    "Location": {
        "description": "The job's URL.",
        "required": True,
        "schema": {"type": "string"},
    }
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before trying again, when known.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
ERRORS = {
    400: "The body is not JSON the server reads (malformed, or nested too deep).",
    401: "No `Authorization: Bearer <API key>` header, or an unknown key.",
    404: "No such job for this API key.",
    409: "The job's state does not allow it.",
    413: "The body is larger than the server accepts.",
    415: "The body is not `application/json`.",
    422: "The request fails validation: `errors` names each field.",
    429: "Over a rate limit or a daily cap: `code` names it, `Retry-After` says when to retry.",
}


def answers_errors(*statuses: int, **descriptions: str) -> Callable[[View], View]:
    """Document the error statuses a view can answer, all in the one error shape;
    `descriptions` (by `e404=...`) says more than the generic text for this view."""

    def decorate(view: View) -> View:
        for status in statuses:
            view = api.alt_response(
                status,
                schema=ErrorSchema,
                description=descriptions.get(f"e{status}", ERRORS[status]),
                headers=RETRY_AFTER if status in {429, 503} else None,
            )(view)
        return view

    return decorate


@api.before_request
def authenticate() -> None:
    """Every jobs API request names its tenant by API key, before its parameters are read."""
    # Flask answers OPTIONS itself with the methods a path allows: nothing a key guards.
    if request.method != "OPTIONS":
        g.tenant = _authenticated_tenant()
        add_log_context(tenant=g.tenant)


def _authenticated_tenant() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send Authorization: Bearer <API key>")
    tenant = _settings().api_keys.tenant_for(presented.strip())
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


def _tenant() -> str:
    tenant: str = g.tenant
    return tenant


@api.post("/jobs")
@api.doc(
    summary="Create a job",
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
    },
    parameters=[{"in": "header", "schema": IdempotencyHeaderSchema}],
)
@api.response(202, JobViewSchema, description="The job was created.", headers=LOCATION)
@api.alt_response(
    200,
    schema=JobViewSchema,
    success=True,
    description="The idempotency key was used before with this body: that job.",
    headers={
        **LOCATION,
        "Idempotent-Replayed": {"required": True, "schema": {"type": "string", "enum": ["true"]}},
    },
)
@answers_errors(
    400, 401, 409, 413, 415, 422, 429, e409="The idempotency key was used with another body."
)
def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    body = _json_body()
    service = _service()
    job, created = service.create_job(body, _tenant(), _idempotency_header())
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return service.job_view(job), 202 if created else 200, headers


@api.get("/jobs/<job_id>", parameters=[JOB_ID])
@api.doc(summary="Get a job")
@api.response(200, JobViewSchema, description="The job.")
@answers_errors(401, 404, 429)
def get_job(job_id: str) -> dict[str, Any]:
    service = _service()
    return service.job_view(service.get_job(_job_id(job_id), _tenant()))


@api.get("/jobs")
@api.doc(summary="List the tenant's jobs, newest first")
@api.arguments(ListQuerySchema, location="query")
@api.response(200, JobPageSchema, description="A page of jobs.")
@answers_errors(401, 422, 429)
def list_jobs(query: dict[str, Any]) -> dict[str, Any]:
    service = _service()
    state = JobState(query["state"]) if query.get("state") else None
    jobs, cursor = service.list_jobs(
        _tenant(),
        state=state,
        cursor=query.get("cursor"),
        limit=query["limit"],
        since=query.get("since"),
    )
    return {
        "jobs": [service.job_view(job) for job in jobs],
        "nextCursor": None if cursor is None else repr(cursor),
    }


@api.get("/stats")
@api.doc(summary="The tenant's counters of each UTC day: jobs, images, spend")
@api.arguments(StatsQuerySchema, location="query")
@api.response(200, StatsSchema, description="The days asked for, today first.")
@answers_errors(401, 422, 429)
def tenant_stats(query: dict[str, Any]) -> dict[str, Any]:
    days = _service().daily_stats(query["days"], _tenant())
    return {"days": [day.view() for day in days]}


@api.post("/jobs/<job_id>/cancel", parameters=[JOB_ID])
@api.doc(summary="Cancel a job")
@api.response(200, JobViewSchema, description="The cancelled job.")
@answers_errors(401, 404, 409, 429, e409="The job has already ended.")
def cancel_job(job_id: str) -> dict[str, Any]:
    service = _service()
    return service.job_view(service.cancel_job(_job_id(job_id), _tenant()))


@api.get("/jobs/<job_id>/images/<int:slot>", parameters=[JOB_ID])
@api.doc(summary="Download one image of a job")
@api.response(
    302,
    description="A fresh presigned GET URL of the stored image, in `Location`.",
    headers={
        "Location": {"required": True, "schema": {"type": "string", "format": "uri"}},
        "Cache-Control": {"required": True, "schema": {"type": "string", "enum": ["no-store"]}},
    },
)
@answers_errors(
    401,
    404,
    409,
    429,
    e404="No such job or image for this API key, or this deployment turns result URLs off.",
    e409="The image is not stored (yet, or ever): see the slot's state.",
)
def job_image(job_id: str, slot: int) -> WerkzeugResponse:
    found = _service().image_url(_job_id(job_id), slot, _tenant())
    response = redirect(found.url, code=302)
    # The URL is minted per request and expires: no cache may hand it out later.
    response.headers["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------- metrics
def _metrics_registry() -> CollectorRegistry:
    """Built on the first scrape, then kept: every process's counters and histograms, merged
    (PROMETHEUS_MULTIPROC_DIR), and the gauges read from Redis at each scrape."""
    extensions = current_app.extensions["imagine"]
    found: CollectorRegistry | None = extensions.get("metrics")
    if found is None:
        gauges = pipeline_metrics.PipelineGauges(_service())
        found = extensions["metrics"] = pipeline_metrics.exposition_registry(gauges)
    return found


@metrics.get("/metrics")
def prometheus() -> Response:
    return Response(generate_latest(_metrics_registry()), content_type=CONTENT_TYPE_LATEST)
