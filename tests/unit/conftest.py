"""Helpers of the unit suite: a stand-in for the use cases and the receiver built around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient

from pipeline.config import Settings
from pipeline.errors import NotFound
from pipeline.models import ResultOutcome, SlotResult
from pipeline.signing import webhook_token
from webhooks.app import create_app

SECRET = "s" * 32
TASK = "1607528b-b740-4975-8cc1-6dc6b2d18f60"


@dataclass
class FakeService:
    """Stands in for JobService: records what the views asked of it."""

    known: set[str] = field(default_factory=lambda: {TASK})
    accepted: list[tuple[str, Any]] = field(default_factory=list)

    def receive_webhook(self, task_uuid: str, body: Any) -> list[SlotResult]:
        if task_uuid not in self.known:
            raise NotFound(f"no task {task_uuid}")
        self.accepted.append((task_uuid, body))
        return [SlotResult("job-1", 0, ResultOutcome.RECEIVED)]


def make_client(
    service: FakeService,
    roles: tuple[str, ...] = ("webhooks", "api", "metrics"),
) -> FlaskClient:
    settings = Settings.from_env(
        {
            "WEBHOOK_SECRETS": SECRET,
            "API_KEYS": "acme:k",
            "WEBHOOK_MAX_BODY_BYTES": "2048",
            "LOG_FORMAT": "text",
            "API_RATE_LIMIT": "off",  # its counts live in Redis: unit tests open no socket
        }
    )
    app = create_app(
        settings,
        service=service,
        inline_service=service,  # type: ignore[arg-type]
        roles=roles,
    )
    return app.test_client()


def url(task: str = TASK, token: str | None = None) -> str:
    return f"/webhooks/runware/{task}?token={token or webhook_token(SECRET, task)}"
