"""Views: authenticate, load, dedupe, act, answer; nothing else."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from pipeline.config import Settings
from pipeline.enqueue import is_job_id
from pipeline.errors import BodyInvalid, NotFound, RequestInvalid, Unauthorized
from pipeline.models import JobState
from pipeline.schemas import IDEMPOTENCY_KEY
from pipeline.services import JobService
from pipeline.signing import verify_webhook_token
from webhooks.limits import MAX_JSON_DEPTH, nests_too_deep
from webhooks.openapi import openapi_document
from webhooks.schemas import ListQuerySchema, load_or_422

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)
receiver = Blueprint("receiver", __name__)
api = Blueprint("api", __name__, url_prefix="/v1")
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


@health.get("/readyz")
def readyz() -> Any:
    service = _service(inline=True)  # short S3 timeouts: a probe must answer quickly
    checks: dict[str, str] = {}
    try:
        service.store.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        service.storage.check()
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), (
        200 if ready else 503
    )


# ---------------------------------------------------------------- Runware webhooks
@receiver.post("/webhooks/runware/<task_uuid>")
def runware_webhook(task_uuid: str) -> Any:
    settings = _settings()
    token = request.args.get("token")
    if not verify_webhook_token(settings.require_webhook_secrets(), task_uuid, token):
        raise Unauthorized("bad or missing webhook token")
    if not is_job_id(task_uuid):  # the pipeline mints every taskUUID as a canonical UUID
        raise NotFound(f"no task {task_uuid[:64]!r}")
    body = _json_body(lenient=True)
    # Short S3 timeouts: the answer never waits on a retry loop; a worker takes over.
    outcomes = _service(inline=True).receive_webhook(task_uuid, body)
    return jsonify({"taskUUID": task_uuid, "results": [outcome.outcome for outcome in outcomes]})


# ---------------------------------------------------------------- jobs API
def _tenant() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send Authorization: Bearer <API key>")
    tenant = _settings().api_keys.tenant_for(presented.strip())
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


@api.post("/jobs")
def create_job() -> Any:
    tenant = _tenant()
    body = _json_body()
    service = _service()
    job, created = service.create_job(body, tenant, _idempotency_header())
    response = jsonify(service.job_view(job))
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@api.get("/jobs/<job_id>")
def get_job(job_id: str) -> Any:
    service = _service()
    tenant = _tenant()
    return jsonify(service.job_view(service.get_job(_job_id(job_id), tenant)))


@api.get("/jobs")
def list_jobs() -> Any:
    tenant = _tenant()
    query = load_or_422(ListQuerySchema(), request.args)
    service = _service()
    state = JobState(query["state"]) if query.get("state") else None
    jobs, cursor = service.list_jobs(
        tenant, state=state, cursor=query.get("cursor"), limit=query["limit"]
    )
    return jsonify(
        {
            "jobs": [service.job_view(job) for job in jobs],
            "nextCursor": None if cursor is None else repr(cursor),
        }
    )


@api.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Any:
    service = _service()
    tenant = _tenant()
    return jsonify(service.job_view(service.cancel_job(_job_id(job_id), tenant)))


@api.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())


# ---------------------------------------------------------------- metrics
@metrics.get("/metrics")
def prometheus() -> Response:
    status = _service().status()
    lines = [
        "# HELP imagine_jobs_active Jobs not yet ended.",
        "# TYPE imagine_jobs_active gauge",
        f"imagine_jobs_active {status.jobs_active}",
        "# HELP imagine_runware_in_flight Images in flight at Runware under this key's budget.",
        "# TYPE imagine_runware_in_flight gauge",
        f"imagine_runware_in_flight {status.images_in_flight}",
        "# HELP imagine_circuit_open 1 while submission is paused by an account-level error.",
        "# TYPE imagine_circuit_open gauge",
        f"imagine_circuit_open {int(status.circuit.open)}",
        "# HELP imagine_queue_length Messages waiting in each Celery queue.",
        "# TYPE imagine_queue_length gauge",
    ]
    lines += [
        f'imagine_queue_length{{queue="{queue}"}} {length}'
        for queue, length in status.queue_lengths.items()
    ]
    lines += [
        "# HELP imagine_model_circuit_open 1 for each model paused on its own by a model error.",
        "# TYPE imagine_model_circuit_open gauge",
    ] + [
        f'imagine_model_circuit_open{{model="{paused.model}"}} 1'
        for paused in status.model_circuits
    ]
    lines += [
        "# HELP imagine_size_mismatches_total Stored images of another size than requested.",
        "# TYPE imagine_size_mismatches_total counter",
        f"imagine_size_mismatches_total {status.mismatches.get('size', 0)}",
        "# HELP imagine_format_mismatches_total Stored images of another format than requested.",
        "# TYPE imagine_format_mismatches_total counter",
        f"imagine_format_mismatches_total {status.mismatches.get('format', 0)}",
    ]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
