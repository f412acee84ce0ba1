"""Log scopes: every line about a job names it, its tenant, slot and the request behind it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.logs import (
    JsonFormatter,
    add_log_context,
    json_handler,
    learn_task_uuid,
    learn_tenant,
    log_context,
    log_scope,
    request_id_from,
)
from tests.unit.conftest import FakeService, make_client, url

pytestmark = pytest.mark.unit

JOB = "5b0f1c52-5c38-4bb4-9d2b-0b0e1f6a3c11"
OTHER = "8e2d7a41-1f0b-4a57-8c5e-6f7d2e9b0a22"


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("tests.log_context")
    logger.handlers[:] = [json_handler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.handlers[:] = []


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_scope_names_its_job_in_every_line_and_ends_with_it(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    with log_scope(request_id="req-12345678", job_id=JOB, tenant="acme", slot=None):
        add_log_context(slot=2)
        logger.info("image stored")
        assert log_context() == {
            "request_id": "req-12345678",
            "job_id": JOB,
            "tenant": "acme",
            "slot": 2,
        }
    logger.info("outside")
    inside, outside = records(stream)
    assert inside["job_id"] == JOB and inside["tenant"] == "acme" and inside["slot"] == 2
    assert inside["request_id"] == "req-12345678" and inside["message"] == "image stored"
    assert "job_id" not in outside and log_context() == {}


def test_a_line_about_another_job_keeps_its_own_and_gets_that_jobs_tenant(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    learn_tenant(OTHER, "globex")
    with log_scope(job_id=JOB, tenant="acme", slot=1, task_id="t-1"):
        logger.info("job ended", extra={"job_id": OTHER})
    (line,) = records(stream)
    assert line["job_id"] == OTHER and line["tenant"] == "globex"
    assert "slot" not in line and line["task_id"] == "t-1"


def test_reading_the_scopes_job_teaches_it_the_tenant(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    with log_scope(job_id=JOB, task="imagine.submit_job"):
        learn_tenant(JOB, "acme")
        logger.info("submitted")
    assert records(stream)[0]["tenant"] == "acme"


def test_reading_the_scopes_slot_teaches_it_the_current_task_uuid(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    with log_scope(job_id=JOB, slot=1):
        learn_task_uuid(JOB, 0, "another-slots-task")
        learn_task_uuid(JOB, 1, "first-attempt")
        learn_task_uuid(JOB, 1, "second-attempt")
        logger.info("image stored")
    assert records(stream)[0]["task_uuid"] == "second-attempt"


def test_celerys_task_records_lose_their_arguments_and_name_the_task() -> None:
    record = logging.LogRecord("celery.app.trace", logging.INFO, "", 0, "done", (), None)
    record.data = {"id": "t-9", "name": "imagine.create_job", "args": "secret prompt"}
    line = json.loads(JsonFormatter().format(record))
    assert line["task_id"] == "t-9" and line["task"] == "imagine.create_job"
    assert "secret prompt" not in json.dumps(line)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("3f0c2a9e-8f7b-4c59-9a1e-2d3c4b5a6f70", True),
        ("req_0123456789", True),
        ("short", False),
        ("has space in it", False),
        ("x" * 200, False),
        ("line\nbreak-injected", False),
        (None, False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_well_formed(given: str | None, kept: bool) -> None:
    found = request_id_from(given)
    assert (found == given) is kept
    assert len(found) >= 8


def test_the_api_answers_with_the_request_id() -> None:
    client = make_client(FakeService())
    mine = client.get("/healthz", headers={"X-Request-Id": "caller-req-0001"})
    assert mine.headers["X-Request-Id"] == "caller-req-0001"
    minted = client.get("/healthz", headers={"X-Request-Id": "bad id"})
    assert minted.headers["X-Request-Id"] not in {"", "bad id"}
    refused = client.get("/v1/jobs", headers={"X-Request-Id": "caller-req-0002"})
    assert refused.status_code == 401 and refused.headers["X-Request-Id"] == "caller-req-0002"
    assert log_context() == {}  # the scope ends with the request


def test_a_webhook_scope_names_its_task() -> None:
    seen: list[dict[str, Any]] = []

    class Recording(FakeService):
        def receive_webhook(self, task_uuid: str, body: Any) -> Any:
            seen.append(log_context())
            return super().receive_webhook(task_uuid, body)

    answer = make_client(Recording()).post(url(), json={"data": []})
    assert answer.status_code == 200
    assert seen[0]["task_uuid"] in url() and len(seen[0]["request_id"]) >= 8


def test_gunicorn_writes_json_lines_without_query_strings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gunicorn.config import Config

    from webhooks.gunicorn_logging import JsonLogger

    config = Config()
    config.set("accesslog", "-")
    logger = JsonLogger(config)
    response = SimpleNamespace(
        status="202 ACCEPTED", headers=[("X-Request-Id", "req-77777777")], sent=12
    )
    environ = {
        "REMOTE_ADDR": "127.0.0.1",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhooks/runware/abc",
        "QUERY_STRING": "token=secret-token",
        "RAW_URI": "/webhooks/runware/abc?token=secret-token",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    try:
        logger.info("Booting worker with pid: %s", 42)
        logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=5))
    finally:
        for name in ("gunicorn.error", "gunicorn.access"):
            logging.getLogger(name).handlers[:] = []
    out = capsys.readouterr()
    (boot,) = [json.loads(line) for line in out.err.splitlines()]
    (access,) = [json.loads(line) for line in out.out.splitlines()]
    assert boot["message"] == "Booting worker with pid: 42" and boot["logger"] == "gunicorn.error"
    assert access["path"] == "/webhooks/runware/abc" and access["status"] == 202
    assert access["request_id"] == "req-77777777" and access["duration_ms"] == 5
    assert "secret-token" not in out.out + out.err


def test_what_a_step_learns_outside_every_scope_is_not_kept_for_the_next() -> None:
    # A script or the CLI's direct mode runs use cases with no scope: a webhook's job and slot
    # must not name every later line of the process.
    add_log_context(job_id=JOB, slot=1, tenant="acme")
    assert log_context() == {}
    with log_scope(job_id=JOB):
        add_log_context(slot=1)
        assert log_context() == {"job_id": JOB, "slot": 1}
    assert log_context() == {}
