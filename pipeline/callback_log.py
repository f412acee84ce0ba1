"""Each delivery attempt of a job's callbacks, kept beside the job for as long as the job is."""

from __future__ import annotations

import json
from typing import Any, Protocol

import redis

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.store import RedisJobStore, redis_client

# The latest attempts of a job; a receiver down for the whole retry window makes about 30.
ATTEMPTS_KEPT = 50


class CallbackLog(Protocol):
    """A job's callback attempts, and when the retry window of the event being delivered
    opened when that was not the job's end (an operator's resend)."""

    def record(self, job_id: str, attempt: dict[str, Any]) -> None: ...

    def attempts(self, job_id: str) -> list[dict[str, Any]]: ...

    def open_window(self, job_id: str, event_id: str, since: float) -> None: ...

    def window_opened(self, job_id: str, event_id: str) -> float | None: ...


class RedisCallbackLog:
    """`<ns>:job:<id>:callbacks`, a capped list of attempts as JSON, and `<ns>:job:<id>:callback`,
    the event a resend reopened the window of; both with the job's retention TTL."""

    def __init__(
        self, client: redis.Redis, *, namespace: str = "imagine", retention_seconds: int = 7 * 86400
    ) -> None:
        self.redis = client
        self.ns = namespace
        self.retention_seconds = retention_seconds

    @classmethod
    def from_settings(
        cls, settings: Settings, client: redis.Redis | None = None
    ) -> RedisCallbackLog:
        return cls(
            client or redis_client(settings), retention_seconds=settings.job_retention_seconds
        )

    def attempts_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:callbacks"

    def window_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:callback"

    def record(self, job_id: str, attempt: dict[str, Any]) -> None:
        key = self.attempts_key(job_id)
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(attempt, separators=(",", ":")))
        pipe.ltrim(key, -ATTEMPTS_KEPT, -1)
        pipe.expire(key, self.retention_seconds)
        pipe.execute()

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(self.attempts_key(job_id), 0, -1)]

    def open_window(self, job_id: str, event_id: str, since: float) -> None:
        key = self.window_key(job_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={"event": event_id, "since": repr(since)})
        pipe.expire(key, self.retention_seconds)
        pipe.execute()

    def window_opened(self, job_id: str, event_id: str) -> float | None:
        raw = self.redis.hgetall(self.window_key(job_id))
        fields = {_text(name): _text(value) for name, value in raw.items()}
        return float(fields["since"]) if fields.get("event") == event_id else None


class MemoryCallbackLog:
    """The same log in one process's memory (unit tests)."""

    def __init__(self) -> None:
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.windows: dict[str, tuple[str, float]] = {}

    def record(self, job_id: str, attempt: dict[str, Any]) -> None:
        kept = [*self.entries.get(job_id, []), dict(attempt)]
        self.entries[job_id] = kept[-ATTEMPTS_KEPT:]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return [dict(attempt) for attempt in self.entries.get(job_id, [])]

    def open_window(self, job_id: str, event_id: str, since: float) -> None:
        self.windows[job_id] = (event_id, since)

    def window_opened(self, job_id: str, event_id: str) -> float | None:
        event, since = self.windows.get(job_id, ("", 0.0))
        return since if event == event_id else None


def log_for(ctx: Context) -> CallbackLog:
    """The log beside the job store, in the same Redis database and namespace."""
    store = ctx.store
    if not isinstance(store, RedisJobStore):
        raise TypeError(f"callback attempts are kept beside a RedisJobStore, not {type(store)}")
    return RedisCallbackLog(
        store.redis, namespace=store.ns, retention_seconds=store.retention_seconds
    )


def callback_attempts(ctx: Context, job_id: str) -> list[dict[str, Any]]:
    """A job's callback attempts, oldest first, as the job view shows them: `at`, `webhookId`,
    `outcome`, `status` (the receiver's HTTP status, or null), `error`, `durationMs` and
    `nextAttemptAt` (when a retry is scheduled)."""
    return log_for(ctx).attempts(job_id)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
