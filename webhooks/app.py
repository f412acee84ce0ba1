"""Flask app factory: serves the webhook receiver and the jobs API together or apart."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.interfaces import Dispatcher
from pipeline.logs import configure_logging
from pipeline.services import JobService
from pipeline.wiring import build_service, with_short_s3_timeouts

log = logging.getLogger(__name__)
ROLES = ("webhooks", "api", "metrics")


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
        service = build_service(settings, dispatcher=dispatcher)
        inline_service = with_short_s3_timeouts(service)
    app = Flask("imagine")
    # A path with doubled slashes is a path that does not exist (404 in the error shape), not
    # a redirect to another one.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_body_bytes
    app.extensions["imagine"] = {
        "settings": settings,
        "service": service,
        "inline": inline_service or service,
    }

    from webhooks import views

    app.register_blueprint(views.health)
    if "webhooks" in roles:
        app.register_blueprint(views.receiver)
    if "api" in roles:
        app.register_blueprint(views.api)
    if "metrics" in roles:
        app.register_blueprint(views.metrics)

    @app.errorhandler(PipelineError)
    def pipeline_error(exc: PipelineError) -> Any:
        response, status = error_response(exc.code, exc.status, exc.message, exc.errors)
        if exc.status in {429, 503} and exc.retry_after is not None:
            # Whole seconds, at least one: what HTTP's Retry-After allows.
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return error_response(name, status, exc.description or name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Any, int]:
        log.exception("unhandled error")
        return error_response("internal", 500, "internal error")

    return app
