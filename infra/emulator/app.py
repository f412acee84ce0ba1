"""Flask views of the emulator: the provider's `POST /v1`, hosted images, `/_emulator/` controls."""

from __future__ import annotations

import ipaddress
import json
import threading
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from infra.emulator import catalog, render
from infra.emulator.catalog import TaskError
from infra.emulator.config import ConfigError, EmulatorConfig
from infra.emulator.engine import Engine
from infra.emulator.faults import FaultError

EXTENSION = "runware_emulator"
SUBMIT_FAULT_CODES = {
    402: ("insufficientCredits", "Insufficient credits to run the task."),
    429: ("rateLimitExceeded", "Queue capacity exceeded; retry later."),
    500: ("internalServerError", "Internal server error."),
    502: ("badGateway", "Bad gateway."),
    503: ("serviceUnavailable", "Temporary capacity constraint; retry later."),
    504: ("timeoutQueue", "The task exceeded the maximum queue wait."),
}

api = Blueprint("runware_api", __name__)
control = Blueprint("emulator_control", __name__, url_prefix="/_emulator")


def engine() -> Engine:
    """The engine of the running app."""
    found: Engine = current_app.extensions[EXTENSION]
    return found


def _envelope(
    status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"errors": errors})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _public_url() -> str:
    configured = engine().config.public_url
    return (configured or request.host_url).rstrip("/")


def _api_key_error(body: list[Any]) -> Response | None:
    """None when the request carries an accepted key, else the 401 answer."""
    keys: list[str] = []
    if (
        isinstance(body, list)
        and body
        and isinstance(body[0], dict)
        and (body[0].get("taskType") == "authentication")
    ):
        value = body[0].get("apiKey")
        if isinstance(value, str) and value:
            keys.append(value)
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        keys.append(header[7:].strip())
    if not keys:
        error = TaskError(
            "missingApiKey",
            "Missing API key: send 'Authorization: Bearer <key>' or a leading authentication task.",
            "apiKey",
            status=401,
        )
        return _envelope(401, [error.item("authentication", None)])
    accepted = engine().config.api_keys
    if accepted and not any(key in accepted for key in keys):
        error = TaskError("invalidApiKey", "Invalid API key.", "apiKey", status=401)
        return _envelope(401, [error.item("authentication", None)])
    return None


def _submit_fault(tasks: list[Any]) -> Response | None:
    """A whole-request refusal (burst, queued or random), for requests with an imageInference."""
    if not any(isinstance(t, dict) and t.get("taskType") == "imageInference" for t in tasks):
        return None
    eng = engine()
    cfg = eng.config
    status: int | None = None
    retry_after = cfg.retry_after_s
    with current_app.extensions[EXTENSION + ".lock"]:
        if cfg.burst > 0:
            cfg.burst -= 1
            status = cfg.burst_status
    if status is None:
        queued = eng.faults.take("submit_error")
        if queued is not None:
            status = int(queued.get("status") or 503)
            if queued.get("retry_after_s") is not None:
                retry_after = int(queued["retry_after_s"])
    if status is None and eng.faults.chance(cfg.submit_error_rate):
        status = int(eng.faults.pick(list(cfg.submit_error_statuses)))
    if status is None:
        return None
    eng.count("submit_faults")
    code, message = SUBMIT_FAULT_CODES.get(status, ("serverError", "Server error."))
    errors = [{"code": code, "message": message, "documentation": catalog.ERRORS_DOCS_URL}]
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    return _envelope(status, errors, headers)


@api.post("/v1")
def submit() -> Response:
    """The provider's single endpoint: an array of tasks, errors per task."""
    eng = engine()
    eng.count("requests")
    body = _request_tasks()
    if body is None:
        error = TaskError(
            "invalidRequestBody", "The request body must be a non-empty JSON array of tasks."
        )
        return _envelope(400, [error.item(None, None)])
    refused = _api_key_error(body)
    if refused is not None:
        return refused
    data: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    first_status: int | None = None
    accepted = 0
    tasks = body
    if isinstance(body[0], dict) and body[0].get("taskType") == "authentication":
        data.append({"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())})
        tasks = body[1:]
    fault = _submit_fault(tasks)
    if fault is not None:
        return fault
    for task in tasks:
        task_type = task.get("taskType") if isinstance(task, dict) else None
        raw_uuid = task.get("taskUUID") if isinstance(task, dict) else None
        task_uuid = raw_uuid if isinstance(raw_uuid, str) else None
        try:
            if not isinstance(task, dict):
                raise TaskError("invalidTask", "Each task must be a JSON object.")
            items, item_errors = _run_task(task)
        except TaskError as exc:
            if task_type == "imageInference":
                eng.count("tasks_rejected")
            errors.append(_error_item(exc, task_type, task_uuid))
            first_status = first_status or exc.status
            continue
        accepted += 1
        data.extend(items)
        errors.extend(item_errors)
    status = 200 if accepted or not tasks else (first_status or 400)
    payload: dict[str, Any] = {"data": data} if status == 200 or data else {}
    if errors:
        payload["errors"] = errors
    response = jsonify(payload)
    response.status_code = status
    return response


def _error_item(exc: TaskError, task_type: Any, task_uuid: str | None) -> dict[str, Any]:
    """A refused task's error item; a conflict omits its taskUUID when the switch says so."""
    if exc.code == "conflictTaskUUID" and engine().config.conflict_without_task_uuid:
        task_uuid = None
    return exc.item(task_type if isinstance(task_type, str) else None, task_uuid)


def _request_tasks() -> list[Any] | None:
    """The request body when it is a non-empty JSON array, else None."""
    try:
        body = json.loads(request.get_data() or b"null")
    except ValueError:
        return None
    return body if isinstance(body, list) and body else None


def _run_task(task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    task_type = task.get("taskType")
    if task_type == "imageInference":
        return _inference(task)
    if task_type == "getResponse":
        return _get_response(task)
    if task_type == "imageUpload":
        return _image_upload(task)
    if task_type == "ping":
        return [{"taskType": "ping", "pong": True}], []
    if task_type is None:
        raise TaskError("missingParameter", "Missing required parameter 'taskType'.", "taskType")
    raise TaskError("unsupportedTaskType", f"Unsupported task type '{task_type}'.", "taskType")


def _inference(task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    eng = engine()
    cfg = eng.config
    if cfg.model_unavailable:
        raise TaskError("unknownModel", f"Model '{task.get('model')}' is not available.", "model")
    model = task.get("model")
    if cfg.model_disabled and model in cfg.model and model not in cfg.retired_models:
        raise TaskError("modelDisabled", f"Model '{model}' is disabled.", "model")
    req = catalog.validate_inference(
        task, cfg.model, cfg.reject_unknown_parameters, cfg.retired_models
    )
    if not eng.reserve(req.task_uuid):
        raise TaskError(
            "conflictTaskUUID",
            f"A task with taskUUID {req.task_uuid} already exists.",
            "taskUUID",
            status=cfg.conflict_status,
        )
    started = eng.start(req, _public_url())
    if req.delivery_method == "async":
        ack: dict[str, Any] = {"taskType": "imageInference", "taskUUID": req.task_uuid}
        if cfg.ack_status:
            ack["status"] = "processing"
        return [ack], []
    eng.wait_task(started, cfg.sync_timeout_s)
    items, errors = eng.sync_view(started)
    if not items:
        code = errors[0]["code"] if errors else "timeoutProvider"
        raise TaskError(
            code,
            errors[0]["message"] if errors else "Generation failed.",
            status=504 if code == "timeoutProvider" else 400,
        )
    return items, errors


def _get_response(task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    eng = engine()
    eng.count("polls")
    task_uuid = task.get("taskUUID")
    if task_uuid is None:
        raise TaskError("missingParameter", "Missing required parameter 'taskUUID'.", "taskUUID")
    found = eng.task(task_uuid) if isinstance(task_uuid, str) else None
    if found is not None and _hidden_from_poll(task_uuid):
        eng.count("polls_not_found")
        found = None
    if found is None:
        raise TaskError(
            "taskFailedOrNotFound", f"No task found with taskUUID {task_uuid}.", "taskUUID"
        )
    return eng.poll_view(found)


def _hidden_from_poll(task_uuid: Any) -> bool:
    """Whether this poll of a known task answers "not found" (the not_found_for_live_task fault)."""
    eng = engine()
    queued = eng.faults.take("not_found_for_live_task", task_uuid)
    return queued is not None or eng.faults.chance(eng.config.not_found_for_live_task)


def _image_upload(task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    eng = engine()
    task_uuid = task.get("taskUUID")
    if task_uuid is None:
        raise TaskError("missingParameter", "Missing required parameter 'taskUUID'.", "taskUUID")
    if not catalog.is_uuid(task_uuid):
        raise TaskError(
            "invalidTaskUUID", "Invalid value for 'taskUUID': must be a UUID.", "taskUUID"
        )
    if "image" not in task:
        raise TaskError("missingParameter", "Missing required parameter 'image'.", "image")
    if not eng.reserve(task_uuid):
        raise TaskError(
            "conflictTaskUUID",
            f"A task with taskUUID {task_uuid} already exists.",
            "taskUUID",
            status=eng.config.conflict_status,
        )
    image_uuid, url = eng.upload(task["image"], _public_url())
    return [
        {"taskType": "imageUpload", "taskUUID": task_uuid, "imageUUID": image_uuid, "imageURL": url}
    ], []


@api.get("/image/<name>")
def hosted_image(name: str) -> Response:
    """A generated or uploaded image until its ttl ends."""
    image_uuid, _, extension = name.partition(".")
    image = engine().hosted(image_uuid)
    if image is None or extension.lower() != render.EXTENSIONS[image.output_format]:
        return _envelope(404, [{"code": "imageNotFound", "message": "No such image."}])
    response = Response(image.data, mimetype=render.CONTENT_TYPES[image.output_format])
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@api.get("/healthz")
def healthz() -> Response:
    """Liveness of the emulator."""
    return jsonify({"status": "ok"})


@control.before_request
def local_only() -> Response | None:
    """Controls answer loopback clients only, unless allowed in the config."""
    if engine().config.allow_remote_control:
        return None
    try:
        local = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        local = False
    if local:
        return None
    return _envelope(403, [{"code": "forbidden", "message": "Controls are local only."}])


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@control.get("/config")
def get_config() -> Response:
    """Every switch and its value."""
    return jsonify(engine().config.to_dict())


@control.patch("/config")
def patch_config() -> Response:
    """Change switches at runtime: a JSON object of name -> value; all or nothing."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _envelope(400, [{"code": "invalidConfig", "message": "Send a JSON object."}])
    eng = engine()
    try:
        with current_app.extensions[EXTENSION + ".lock"]:
            eng.config.update(body)
    except ConfigError as exc:
        return _envelope(400, [{"code": "invalidConfig", "message": str(exc)}])
    if "seed" in body:
        eng.faults.reseed()
    return jsonify(eng.config.to_dict())


@control.post("/reset")
def reset() -> Response:
    """Forget state, ledger, stats and queues; `{"config": true}` also restores the config."""
    engine().reset(restore_config=bool(_json_object().get("config")))
    return jsonify({"reset": True, "config": engine().config.to_dict()})


@control.get("/ledger")
def ledger() -> Response:
    """Charged images and totals; `?taskUUID=` narrows to one task."""
    return jsonify(engine().ledger.report(request.args.get("taskUUID")))


@control.get("/tasks")
def tasks() -> Response:
    """Summaries of every task."""
    return jsonify({"tasks": [t.summary() for t in engine().tasks()]})


@control.get("/tasks/<task_uuid>")
def task_detail(task_uuid: str) -> Response:
    """One task with each image's state, PUT outcome and webhook attempts."""
    found = engine().task(task_uuid)
    if found is None:
        return _envelope(404, [{"code": "taskNotFound", "message": "No such task."}])
    return jsonify(engine().task_detail(found))


@control.get("/stats")
def stats() -> Response:
    """Counters since start or the last reset."""
    return jsonify(engine().stats())


@control.get("/idle")
def idle() -> Response:
    """Whether nothing is pending (no render, PUT, webhook or held webhook)."""
    pending = engine().pending
    return jsonify({"idle": pending == 0, "pending": pending})


@control.post("/flush")
def flush() -> Response:
    """Wait up to `timeout_s` (default 30) until idle."""
    timeout = _json_object().get("timeout_s", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return _envelope(400, [{"code": "invalidTimeout", "message": "timeout_s: a number."}])
    done = engine().wait_idle(float(timeout))
    return jsonify({"idle": done, "pending": engine().pending})


@control.get("/faults/queue")
def fault_queue() -> Response:
    """One-shot faults not consumed yet."""
    return jsonify({"queue": engine().faults.queued()})


@control.post("/faults/queue")
def enqueue_fault() -> Response:
    """Queue `count` one-shot faults of a kind, optionally for one taskUUID."""
    try:
        entry = engine().faults.enqueue(_json_object())
    except FaultError as exc:
        return _envelope(400, [{"code": "invalidFault", "message": str(exc)}])
    return jsonify({"queued": entry.to_dict(), "queue": engine().faults.queued()})


@control.delete("/faults/queue")
def clear_faults() -> Response:
    """Drop every queued one-shot fault."""
    engine().faults.clear()
    return jsonify({"queue": []})


def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").replace(" ", "")
    return _envelope(
        exc.code or 500, [{"code": code[0].lower() + code[1:], "message": exc.description or ""}]
    )


def create_app(config: EmulatorConfig | None = None) -> Flask:
    """The emulator app; `config` defaults to the `EMULATOR_*` environment."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    cfg = config if config is not None else EmulatorConfig.from_env()
    cfg.check()
    app.extensions[EXTENSION] = Engine(cfg)
    app.extensions[EXTENSION + ".lock"] = threading.Lock()
    app.register_blueprint(api)
    app.register_blueprint(control)
    app.register_error_handler(HTTPException, _http_error)
    return app


def close_app(app: Flask) -> None:
    """Stop the app's threads and HTTP client."""
    found: Engine = app.extensions[EXTENSION]
    found.close()
