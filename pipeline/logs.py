"""JSON logging with job context; no URL query strings or secrets are ever formatted."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# A log scope is what every line of a request or a task carries without each log call naming
# it (request_id, job_id, tenant, slot, task_uuid, task, task_id): set where a request is
# handled or a task starts, added to each record by `LogContextFilter`.
# Fields that describe one job: a record naming another job (a reconcile pass logging each job
# it looked at) keeps its own and gets none of the scope's.
JOB_FIELDS = frozenset({"tenant", "slot", "task_uuid"})
REQUEST_ID_HEADER = "X-Request-Id"
# A caller's request id is kept when it is short and plain (it lands in every log line and in
# message headers); anything else is replaced by one of ours.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")

# Outside every scope: nothing is added to it, so what one step learns never leaks into the
# next step of a process that runs use cases without a scope (a script, the CLI's direct mode).
_NO_SCOPE: Mapping[str, Any] = MappingProxyType({})
# Never mutated: each change sets a new mapping, so a scope's reset restores the one before.
_context: ContextVar[Mapping[str, Any]] = ContextVar("imagine_log_context", default=_NO_SCOPE)


def log_context() -> dict[str, Any]:
    """The fields every record of the current scope carries."""
    return dict(_context.get())


def bind_log_context(**fields: Any) -> Token[Mapping[str, Any]]:
    """Open a scope with these fields (None values are left out); pass the token to
    `reset_log_context` when the scope ends."""
    return _context.set({k: v for k, v in fields.items() if v is not None})


def reset_log_context(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


def add_log_context(**fields: Any) -> None:
    """Add what the current scope has just learnt (a tenant, a slot); the scope's reset drops
    them with the rest."""
    found = {k: v for k, v in fields.items() if v is not None}
    current = _context.get()
    if found and current is not _NO_SCOPE:
        _context.set({**current, **found})


# The tenant of each job this process read lately: a record naming a job gets its tenant
# (a reconcile pass, a webhook whose first lines come before its job is read).
_tenants: OrderedDict[str, str] = OrderedDict()
TENANTS_REMEMBERED = 4096


def learn_tenant(job_id: str, tenant: str | None) -> None:
    """A job's tenant, as a step has just read it (the job store calls this)."""
    if not tenant:
        return
    _tenants[job_id] = tenant
    _tenants.move_to_end(job_id)
    while len(_tenants) > TENANTS_REMEMBERED:
        _tenants.popitem(last=False)
    current = _context.get()
    if current.get("job_id") == job_id and "tenant" not in current:
        _context.set({**current, "tenant": tenant})


def learn_task_uuid(job_id: str, slot: int, task_uuid: str | None) -> None:
    """The current taskUUID of the slot the current scope is about, once a step has read it."""
    current = _context.get()
    if (
        task_uuid
        and current.get("job_id") == job_id
        and current.get("slot") == slot
        and current.get("task_uuid") != task_uuid
    ):
        _context.set({**current, "task_uuid": task_uuid})


@contextmanager
def log_scope(**fields: Any) -> Iterator[None]:
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        reset_log_context(token)


def request_id_from(value: str | None) -> str:
    """The caller's request id when well formed, else a new one."""
    if value and REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class LogContextFilter(logging.Filter):
    """Adds the scope's fields to each record that does not carry them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        named = getattr(record, "job_id", None)
        other_job = named is not None and named != context.get("job_id")
        for key, value in context.items():
            if other_job and (key in JOB_FIELDS or key == "job_id"):
                continue
            if not hasattr(record, key):
                setattr(record, key, value)
        job_id = getattr(record, "job_id", None)
        if job_id is not None and not hasattr(record, "tenant") and job_id in _tenants:
            setattr(record, "tenant", _tenants[job_id])  # noqa: B010 - a LogRecord's extra
        return True


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
                    if "id" in value:
                        entry.setdefault("task_id", value["id"])
                        entry.setdefault("task", value.get("name"))
                    value = {k: v for k, v in value.items() if k not in {"args", "kwargs"}}
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing JSON lines with the scope's context to stream (default: stderr)."""
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LogContextFilter())
    return handler


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    # The real stderr: a Celery worker replaces sys.stderr with a proxy that logs what is
    # written to it, and a record written there by the root handler would be dropped.
    handler = json_handler()
    if fmt != "json":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; presigned and webhook URLs carry credentials.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
