"""Gunicorn's own log lines (start-up, workers, access) as the pipeline's JSON lines."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from pipeline.logs import REQUEST_ID_HEADER, JsonFormatter, LogContextFilter


class JsonLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type information
    """Every handler gunicorn sets up writes JSON; an access line is a record with fields.

    The access record names the path without its query string: a webhook URL carries its
    token there. Its request id is the one the app answered with, so an access line and the
    app's lines about the same request share it."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(LogContextFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        headers = dict((name.lower(), value) for name, value in resp.headers or ())
        try:
            self.access_log.info(
                "request",
                extra={
                    "remote": environ.get("REMOTE_ADDR", "-"),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status),
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": request_time.seconds * 1000 + request_time.microseconds // 1000,
                    "request_id": headers.get(REQUEST_ID_HEADER.lower()),
                },
            )
        except Exception:
            logging.getLogger("gunicorn.error").exception("access log line failed")
