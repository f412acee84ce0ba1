"""Per-tenant counters of each UTC day (jobs created and ended by state, images, spend), counted
by the store's steps, and the time windows an operator lists jobs by."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline import clock
from pipeline.context import Context
from pipeline.models import JOB_TERMINAL
from pipeline.quotas import DAY_SECONDS, MICROS_PER_USD, quotas, redis_store
from pipeline.store import STATS_TTL_SECONDS, stats_day

# The days a counter outlives: asking for more would show days that only look quiet.
MAX_DAYS = STATS_TTL_SECONDS // DAY_SECONDS
ENDED_STATES = tuple(sorted(JOB_TERMINAL))
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": DAY_SECONDS, "w": 7 * DAY_SECONDS}


@dataclass(frozen=True)
class DayStats:
    """One tenant's counters of one UTC day. `ended` counts jobs by the state they ended in
    that day (a job an operator reopens counts again when it ends again); `reserved` is what
    the daily caps hold for the day (None when no cap counted it)."""

    day: str
    tenant: str
    created: int = 0
    images_requested: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    images_stored: int = 0
    images_failed: int = 0
    spend_usd: float = 0.0
    reserved_images: int | None = None
    reserved_spend_usd: float | None = None

    def view(self) -> dict[str, Any]:
        """The day as the API shows it."""
        reserved = (
            None
            if self.reserved_images is None
            else {"images": self.reserved_images, "spendUsd": self.reserved_spend_usd}
        )
        return {
            "day": self.day,
            "tenant": self.tenant,
            "created": self.created,
            "imagesRequested": self.images_requested,
            "ended": {str(state): self.ended.get(state, 0) for state in ENDED_STATES},
            "imagesStored": self.images_stored,
            "imagesFailed": self.images_failed,
            "spendUsd": self.spend_usd,
            "reserved": reserved,
        }


def _number(raw: Any) -> int:
    return int(raw) if raw else 0


def day_stats(day: str, tenant: str, counters: dict[str, str], usage: list[Any]) -> DayStats:
    """A day's counters as the store's scripts wrote them, and the caps' counters beside them."""
    images, spend = usage
    return DayStats(
        day=day,
        tenant=tenant,
        created=_number(counters.get("created")),
        images_requested=_number(counters.get("images_requested")),
        ended={str(state): _number(counters.get(state)) for state in ENDED_STATES},
        images_stored=_number(counters.get("images_stored")),
        images_failed=_number(counters.get("images_failed")),
        spend_usd=_number(counters.get("spend_micros")) / MICROS_PER_USD,
        reserved_images=None if images is None else int(images),
        reserved_spend_usd=None if spend is None else int(spend) / MICROS_PER_USD,
    )


def last_days(days: int, now: float) -> list[str]:
    """The UTC days from today back, `days` of them."""
    return [stats_day(now - n * DAY_SECONDS) for n in range(days)]


def daily_stats(ctx: Context, days: int, tenant: str | None = None) -> list[DayStats]:
    """The counters of the last `days` UTC days (today first), of `tenant`, or of each tenant
    counted on each day (by name); a tenant's day without a count shows zeros."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1 to {MAX_DAYS}")
    store = redis_store(ctx)
    caps = quotas(ctx)
    dates = last_days(days, clock.now())
    if tenant is None:
        pipe = store.redis.pipeline(transaction=False)
        for day in dates:
            pipe.smembers(store.stats_prefix(day) + "tenants")
        counted = zip(dates, pipe.execute(), strict=True)
        rows = [(day, str(name)) for day, names in counted for name in sorted(names)]
    else:
        rows = [(day, tenant) for day in dates]
    pipe = store.redis.pipeline(transaction=False)
    for day, name in rows:
        pipe.hgetall(store.stats_prefix(day) + f"tenant:{name}")
        pipe.hmget(caps.tenant_key(day, name), ["images", "spend"])
    found = pipe.execute()
    return [
        day_stats(day, name, dict(found[2 * n]), list(found[2 * n + 1]))
        for n, (day, name) in enumerate(rows)
    ]


def parse_since(text: str, now: float) -> float:
    """The start of a window: a duration back from `now` (`90s`, `30m`, `1h`, `2d`, `1w`, or
    several, `1h30m`), or an ISO 8601 time (UTC unless it names its offset). ValueError says
    what is accepted."""
    value = text.strip()
    if value and _DURATION.sub("", value).strip() == "" and _DURATION.search(value):
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(value))
        return now - seconds
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 1h, 2d, 1h30m) nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
