"""Flask app factory: serves the webhook receiver and the jobs API together or apart."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from flask import Blueprint, Flask, jsonify
from marshmallow import Schema
from werkzeug.exceptions import HTTPException

from pipeline import tracing
from pipeline.broker import refuses_writes_for_now
from pipeline.catalog import get_model
from pipeline.config import Settings
from pipeline.dependencies import address, redis_unavailable
from pipeline.errors import DependencyUnavailable, PipelineError
from pipeline.interfaces import Dispatcher
from pipeline.logs import configure_logging
from pipeline.schemas import JobRequestSchema
from pipeline.services import JobService
from pipeline.wiring import build_service, with_short_s3_timeouts
from webhooks.request_context import init_request_context
from webhooks.schemas import ErrorSchema

if TYPE_CHECKING:
    from apispec import APISpec

    class Api:
        """The parts of flask-smorest's Api the factory uses, typed: the package ships no type
        information."""

        ERROR_SCHEMA: type[Schema]
        DEFAULT_ERROR_RESPONSE_NAME: str | None
        spec: APISpec

        def __init__(self, app: Flask | None = None) -> None: ...

        def register_blueprint(self, blp: Blueprint, **options: Any) -> None: ...

        def _register_error_handlers(self) -> None: ...

        def _register_pagination_header(self) -> None: ...

        def _register_etag_headers(self) -> None: ...

else:
    from flask_smorest import Api

log = logging.getLogger(__name__)
ROLES = ("webhooks", "api", "metrics")

# flask-smorest serves the document at /v1/openapi.json and Swagger UI at /docs (its scripts
# come from a CDN: the page is for people, who have a browser online).
OPENAPI_CONFIG = {
    "API_TITLE": "imagine-pipeline jobs API",
    "API_VERSION": "1",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "v1/openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.17.14/",
    "OPENAPI_SWAGGER_UI_CONFIG": {"persistAuthorization": True},
    "API_SPEC_OPTIONS": {
        "info": {
            "description": (
                "Turns image requests into verified image files in S3 through Runware. "
                "Every error is JSON `{code, status, message, errors}`. "
                "Authenticate with `Authorization: Bearer <API key>`."
            )
        },
        "security": [{"apiKey": []}],
    },
}


class JobsApi(Api):
    """flask-smorest's Api for the jobs API: documented errors are the one error shape, and
    the app's own handlers answer them."""

    ERROR_SCHEMA = ErrorSchema
    # Each operation lists the statuses it can answer; no catch-all `default` answer.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_error_handlers(self) -> None:
        """Nothing: `create_app` registers the one handler of every error."""

    def _register_pagination_header(self) -> None:
        """Nothing: the jobs API pages by cursor, not by flask-smorest's page numbers."""

    def _register_etag_headers(self) -> None:
        """Nothing: no view answers by ETag."""


def document_job_request(api: JobsApi, settings: Settings) -> None:
    """Document the job request with the schema the use case loads it with, built as it builds
    it, plus what every model this deployment allows has in common from the catalog (a request
    outside it is refused whatever the model; each model's own rules are checked on top)."""
    schema = JobRequestSchema(settings.runware_model, settings.allowed_models)
    api.spec.components.schema(
        "JobRequest",
        schema=schema,
        description=(
            "Runware's own parameter names plus the pipeline's fields. Give the size as "
            "`width` and `height`, as `resolution`, or through `inputs.referenceImages` (an "
            "edit); the model's rules are checked at once: a 422 names each refused field."
        ),
    )
    properties = api.spec.components.schemas["JobRequest"]["properties"]
    models = [get_model(air) for air in schema.allowed_models]
    for name in ("model", "fallbackModel"):
        properties[name]["enum"] = [*schema.allowed_models, None]
    properties["model"]["description"] = f"Default: {settings.runware_model}."
    properties["resolution"]["enum"] = [*sorted({p for m in models for p in m.presets}), None]
    for name, ranges in (
        ("numberResults", [m.number_results for m in models]),
        ("outputQuality", [m.output_quality for m in models]),
    ):
        properties[name]["minimum"] = min(low for low, _ in ranges)
        properties[name]["maximum"] = max(high for _, high in ranges)
    formats = sorted({fmt for m in models for fmt in m.output_formats})
    properties["outputFormat"]["description"] = f"One of {', '.join(formats)}, in any case."
    default = get_model(settings.runware_model)
    width, height = default.presets[default.default_preset][0]
    api.spec.components.schemas["JobRequest"]["examples"] = [
        {"positivePrompt": "a lighthouse at dawn, oil painting", "width": width, "height": height}
    ]


def register_api(app: Flask, settings: Settings) -> JobsApi:
    """Serve the jobs API with its OpenAPI document, generated from the schemas the views load
    and answer with, and Swagger UI at /docs."""
    from webhooks import views

    app.config.update(OPENAPI_CONFIG)
    api = JobsApi(app)
    api.spec.components.security_scheme(
        "apiKey",
        {"type": "http", "scheme": "bearer", "description": "A tenant's API key (API_KEYS)."},
    )
    document_job_request(api, settings)
    api.register_blueprint(views.api)
    return api


def error_response(
    code: str, status: int, message: str, errors: dict[str, Any] | None = None
) -> tuple[Any, int]:
    return jsonify(
        {"code": code, "status": status, "message": message, "errors": errors or {}}
    ), status


def create_app(
    settings: Settings | None = None,
    *,
    service: JobService | None = None,
    inline_service: JobService | None = None,
    dispatcher: Dispatcher | None = None,
    roles: Iterable[str] | None = None,
) -> Flask:
    """The receiver; `service` and `inline_service` (the same use cases with short S3 timeouts,
    for work done while Runware waits for the webhook's answer) are built from the settings
    unless given, sending their nudges through `dispatcher` (default: the shared Celery app)."""
    settings = settings or Settings.from_env()
    settings.require_webhook_secrets()
    configure_logging(settings.log_level, settings.log_format)
    roles = tuple(roles) if roles is not None else settings.receiver_roles
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown receiver roles: {sorted(unknown)}")
    if service is None:
        service = build_service(settings, dispatcher=dispatcher, request_path=True)
        inline_service = with_short_s3_timeouts(service)
    app = Flask("imagine")
    # A path with doubled slashes is a path that does not exist (404 in the error shape), not
    # a redirect to another one.
    app.url_map.merge_slashes = False
    init_request_context(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_body_bytes
    app.extensions["imagine"] = {
        "settings": settings,
        "service": service,
        "inline": inline_service or service,
    }

    from webhooks import ratelimit, views

    app.register_blueprint(views.health)
    if "webhooks" in roles:
        app.register_blueprint(views.receiver)
    if "api" in roles:
        app.extensions["imagine"]["api"] = register_api(app, settings)
        ratelimit.init_rate_limits(app, settings, views.api)
    if "metrics" in roles:
        app.register_blueprint(views.metrics)

    register_error_handlers(app, settings)
    tracing.trace_receiver(app)  # off unless the OTEL_* settings ask
    return app


def register_error_handlers(app: Flask, settings: Settings) -> None:
    """The one handler of every error: each answers the one error shape."""

    @app.errorhandler(PipelineError)
    def pipeline_error(exc: PipelineError) -> Any:
        response, status = error_response(exc.code, exc.status, exc.message, exc.errors)
        if exc.status in {429, 503} and exc.retry_after is not None:
            # Whole seconds, at least one: what HTTP's Retry-After allows.
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, status

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(redis.exceptions.InvalidResponse)  # something else answers at its address
    def redis_unreachable(exc: Exception) -> Any:
        # A 503 with Retry-After naming Redis, not a 500: the caller (Runware too) tries again.
        log.warning("redis unreachable: %s", exc, extra={"error": type(exc).__name__})
        return pipeline_error(redis_unavailable(exc, settings))

    @app.errorhandler(redis.ResponseError)
    def redis_refused(exc: redis.ResponseError) -> Any:
        # During a Sentinel failover a demoted master answers READONLY and a new one NOREPLICAS
        # until its replica follows: Redis answers but takes no write for a few seconds.
        if not refuses_writes_for_now(exc):
            return unexpected(exc)
        log.warning("redis refuses writes: %s", exc, extra={"error": type(exc).__name__})
        where = address(settings.redis_url)
        # redis-py drops READONLY from the message of the error class it maps it to.
        reason = "READONLY" if isinstance(exc, redis.ReadOnlyError) else str(exc).split(" ")[0]
        return pipeline_error(
            DependencyUnavailable("redis", f"redis at {where} takes no writes for now: {reason}")
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return error_response(name, status, exc.description or name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Any, int]:
        log.exception("unhandled error")
        return error_response("internal", 500, "internal error")
