"""JSON logging with job context; no URL query strings or secrets are ever formatted."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                if key == "data" and isinstance(value, dict):
                    # Celery's task records carry the arguments: a request body (prompt,
                    # callback URL, metadata) belongs to its job, not to the log.
                    value = {k: v for k, v in value.items() if k not in {"args", "kwargs"}}
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    # The real stderr: a Celery worker replaces sys.stderr with a proxy that logs what is
    # written to it, and a record written there by the root handler would be dropped.
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; presigned and webhook URLs carry credentials.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
