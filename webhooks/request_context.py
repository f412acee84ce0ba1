"""Each request's log scope: its request id (taken from X-Request-Id when well formed, else
minted, and answered in the same header) and the job or task its URL names."""

from __future__ import annotations

from flask import Flask, Response, g, request

from pipeline.logs import (
    REQUEST_ID_HEADER,
    bind_log_context,
    request_id_from,
    reset_log_context,
)


def open_scope() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    named = request.view_args or {}
    g.log_token = bind_log_context(
        request_id=g.request_id, job_id=named.get("job_id"), task_uuid=named.get("task_uuid")
    )


def answer_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def close_scope(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        reset_log_context(token)


def init_request_context(app: Flask) -> None:
    """Open the scope before any other hook (authentication, rate limits) logs or fails."""
    app.before_request_funcs.setdefault(None, []).insert(0, open_scope)
    app.after_request(answer_request_id)
    app.teardown_request(close_scope)
