"""Fair limits in Redis: daily caps on images and estimated spend, reserved as a job is made,
and the operator's switch that pauses all submission to Runware."""

from __future__ import annotations

import datetime
import logging
import math
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import admission, clock
from pipeline.catalog import get_model
from pipeline.context import Context
from pipeline.errors import LimitExceeded
from pipeline.store import RedisJobStore

log = logging.getLogger(__name__)

DAY_SECONDS = 86400
# A day's counters outlive the day by one more, so a reservation given back just after midnight
# still finds the counters it was taken from.
QUOTA_TTL_SECONDS = 2 * DAY_SECONDS
# Spend is counted in millionths of a dollar: integers add up exactly, prices have 6 decimals.
MICROS_PER_USD = 1_000_000
WAKE_PAGE = 1000

_RESERVE = """
-- KEYS[1] the tenant's day (hash: images, spend), KEYS[2] the deployment's day (hash: spend),
-- KEYS[3] the request's idempotency key (or a placeholder when ARGV[7] is '').
-- ARGV: images, spend, tenant image cap, tenant spend cap, global spend cap (0: no cap), ttl,
-- job key prefix.
-- Every cap is checked before anything is counted: a refused request reserves nothing.
if ARGV[7] ~= '' then
  -- An idempotency key that names a job still on record is a replay: it was counted once.
  -- (The key's value is 'job id|body hash', as the job store's create script writes it.)
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local job_id = string.match(existing, '^([^|]*)|')
    if job_id and redis.call('EXISTS', ARGV[7] .. job_id) == 1 then return {'replay', 0} end
  end
end
local images = tonumber(redis.call('HGET', KEYS[1], 'images') or '0')
local spend = tonumber(redis.call('HGET', KEYS[1], 'spend') or '0')
local total = tonumber(redis.call('HGET', KEYS[2], 'spend') or '0')
local want_images, want_spend = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
if cap > 0 and images + want_images > cap then return {'daily_image_cap', images} end
cap = tonumber(ARGV[4])
if cap > 0 and spend + want_spend > cap then return {'daily_spend_cap', spend} end
cap = tonumber(ARGV[5])
if cap > 0 and total + want_spend > cap then return {'global_spend_cap', total} end
redis.call('HINCRBY', KEYS[1], 'images', want_images)
redis.call('HINCRBY', KEYS[1], 'spend', want_spend)
redis.call('HINCRBY', KEYS[2], 'spend', want_spend)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {'', 0}
"""

_GIVE_BACK = """
-- KEYS[1] the tenant's day, KEYS[2] the deployment's day. ARGV: images, spend.
-- Only counters that still exist: a counter made here would have no expiry.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'images', -tonumber(ARGV[1]))
  redis.call('HINCRBY', KEYS[1], 'spend', -tonumber(ARGV[2]))
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'spend', -tonumber(ARGV[2]))
end
return 1
"""

_HOLD = """
-- KEYS[1] the pause switch, KEYS[2] the jobs it holds. ARGV: job id, now.
-- Checked and queued in one step: a resume between the two would never wake this job.
local reason = redis.call('HGET', KEYS[1], 'reason')
if not reason then return false end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return reason
"""

_RESUME = """
-- KEYS[1] the pause switch, KEYS[2] the jobs it holds. Returns how many jobs to wake: every
-- job held so far was queued before the switch went off, so none is left behind.
local was = redis.call('DEL', KEYS[1])
return {was, redis.call('ZCARD', KEYS[2])}
"""


def utc_day(now: float) -> str:
    """The UTC day of a timestamp, as the caps count it: YYYY-MM-DD."""
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")


def seconds_to_utc_midnight(now: float) -> float:
    """Seconds from `now` until the next UTC day begins (the caps start again)."""
    return DAY_SECONDS - (now % DAY_SECONDS)


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def estimated_spend(request: dict[str, Any]) -> float:
    """What a validated request may cost, in USD: the catalog's price of its images on its model,
    or on its fallback model when that costs more (the images may be sent on either)."""
    images = int(request["numberResults"])
    references = len((request.get("inputs") or {}).get("referenceImages") or [])
    models = [
        request["model"],
        *([request["fallbackModel"]] if request.get("fallbackModel") else []),
    ]
    return max(get_model(air).estimate_cost(images, references) for air in models)


@dataclass(frozen=True)
class Reservation:
    """Images and spend counted against one tenant's UTC day (and the deployment's)."""

    day: str
    tenant: str
    images: int
    spend_micros: int


@dataclass(frozen=True)
class DailyUsage:
    """What a tenant and the whole deployment have reserved on one UTC day."""

    day: str
    tenant: str
    images: int
    spend_usd: float
    global_spend_usd: float


@dataclass(frozen=True)
class SubmissionPause:
    """The operator's pause: submission to Runware stops until `resume_submissions`."""

    reason: str
    paused_at: float | None
    held_jobs: int


CAP_NAMES = {
    "daily_image_cap": "daily image cap",
    "daily_spend_cap": "daily spend cap",
    "global_spend_cap": "global daily spend cap",
}


class RedisQuotas:
    """The caps' day counters, one hash per tenant and day and one for the deployment, and the
    pause switch with the jobs it holds, beside the pipeline's records in Redis."""

    def __init__(self, client: redis.Redis, *, namespace: str = "imagine") -> None:
        self.redis = client
        self.ns = namespace
        self.pause_key = f"{namespace}:submissions-paused"
        self.held_key = f"{namespace}:submissions-held"
        self._reserve = client.register_script(_RESERVE)
        self._give_back = client.register_script(_GIVE_BACK)
        self._hold = client.register_script(_HOLD)
        self._resume = client.register_script(_RESUME)

    def tenant_key(self, day: str, tenant: str) -> str:
        return f"{self.ns}:quota:{day}:tenant:{tenant}"

    def global_key(self, day: str) -> str:
        return f"{self.ns}:quota:{day}:all"

    # --- daily caps ---
    def reserve(
        self,
        reservation: Reservation,
        caps: tuple[int, int, int],
        replay_key: str | None = None,
        job_prefix: str = "",
    ) -> tuple[str, int]:
        """Count `reservation` unless a cap (images, tenant spend, global spend in micro-USD; 0:
        none) would pass, or `replay_key` names a job already made. Returns ('', 0) when
        counted, ('replay', 0), or the refusing cap's code and what its counter holds."""
        code, used = self._reserve(
            keys=[
                self.tenant_key(reservation.day, reservation.tenant),
                self.global_key(reservation.day),
                replay_key or f"{self.ns}:idem:-",
            ],
            args=[
                reservation.images,
                reservation.spend_micros,
                *caps,
                QUOTA_TTL_SECONDS,
                job_prefix if replay_key else "",
            ],
        )
        return str(code), int(used)

    def give_back(self, reservation: Reservation) -> None:
        self._give_back(
            keys=[
                self.tenant_key(reservation.day, reservation.tenant),
                self.global_key(reservation.day),
            ],
            args=[reservation.images, reservation.spend_micros],
        )

    def usage(self, day: str, tenant: str) -> DailyUsage:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.tenant_key(day, tenant), ["images", "spend"])
        pipe.hget(self.global_key(day), "spend")
        (images, spend), total = pipe.execute()
        return DailyUsage(
            day=day,
            tenant=tenant,
            images=int(images or 0),
            spend_usd=int(spend or 0) / MICROS_PER_USD,
            global_spend_usd=int(total or 0) / MICROS_PER_USD,
        )

    # --- the pause switch ---
    def pause(self, reason: str) -> bool:
        """Turn the switch on (a second pause only updates the reason); True when it was off."""
        pipe = self.redis.pipeline()
        pipe.hsetnx(self.pause_key, "paused_at", repr(time.time()))
        pipe.hset(self.pause_key, "reason", reason)
        fresh, _ = pipe.execute()
        return bool(fresh)

    def hold(self, job_id: str) -> str | None:
        """The pause's reason, with `job_id` queued to be woken on resume; None while off."""
        reason = self._hold(keys=[self.pause_key, self.held_key], args=[job_id, repr(time.time())])
        return None if reason is None else str(reason)

    def resume(self) -> tuple[bool, int]:
        """Turn the switch off; returns whether it was on and how many jobs it held."""
        was, held = self._resume(keys=[self.pause_key, self.held_key])
        return bool(was), int(held)

    def pop_held(self, count: int) -> list[str]:
        if count <= 0:
            return []
        rows: Any = self.redis.zpopmin(self.held_key, count)
        return [str(member) for member, _score in rows]

    def state(self) -> SubmissionPause | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.pause_key)
        pipe.zcard(self.held_key)
        raw, held = pipe.execute()
        if not raw or "reason" not in raw:
            return None
        paused_at = raw.get("paused_at")
        return SubmissionPause(
            reason=str(raw["reason"]),
            paused_at=float(paused_at) if paused_at else None,
            held_jobs=int(held),
        )


# One adapter per Redis client: building one registers its scripts.
_BY_CLIENT: weakref.WeakKeyDictionary[redis.Redis, RedisQuotas] = weakref.WeakKeyDictionary()


def redis_store(ctx: Context) -> RedisJobStore:
    """The job store, which must be Redis's: the caps check its idempotency keys in the same
    script that counts, and share its client."""
    if not isinstance(ctx.store, RedisJobStore):
        raise TypeError("daily caps and the pause switch need the Redis job store")
    return ctx.store


def quotas(ctx: Context) -> RedisQuotas:
    """The quotas beside the job store, on its Redis client and namespace."""
    store = redis_store(ctx)
    found = _BY_CLIENT.get(store.redis)
    if found is None or found.ns != store.ns:
        found = _BY_CLIENT[store.redis] = RedisQuotas(store.redis, namespace=store.ns)
    return found


def caps_in_micros(ctx: Context) -> tuple[int, int, int]:
    settings = ctx.settings
    return (
        settings.tenant_daily_images,
        usd_to_micros(settings.tenant_daily_spend_usd),
        usd_to_micros(settings.global_daily_spend_usd),
    )


def reserve_daily(
    ctx: Context, request: dict[str, Any], tenant: str, idempotency_key: str | None
) -> Reservation | None:
    """Count a validated request's images and estimated spend against today's caps (UTC), or
    raise LimitExceeded naming the cap; None when nothing was counted (no cap is set, or the
    request replays a job its idempotency key made)."""
    caps = caps_in_micros(ctx)
    if not any(caps):
        return None
    now = clock.now()
    reservation = Reservation(
        day=utc_day(now),
        tenant=tenant,
        images=int(request["numberResults"]),
        spend_micros=usd_to_micros(estimated_spend(request)),
    )
    store = redis_store(ctx)
    replay_key = store.idempotency_key(tenant, idempotency_key) if idempotency_key else None
    code, used = quotas(ctx).reserve(reservation, caps, replay_key, store.job_key(""))
    if code == "":
        return reservation
    if code == "replay":
        return None
    raise cap_exceeded(ctx, code, used, reservation, now)


def cap_exceeded(
    ctx: Context, code: str, used: int, reservation: Reservation, now: float
) -> LimitExceeded:
    """The refusal of a request by one cap: its name, what is used, what was asked."""
    settings = ctx.settings
    if code == "daily_image_cap":
        detail = (
            f"tenant {reservation.tenant} has {used} of {settings.tenant_daily_images} images "
            f"for {reservation.day} (UTC) and this job asks for {reservation.images}"
        )
    else:
        whose, cap = (
            (f"tenant {reservation.tenant}", settings.tenant_daily_spend_usd)
            if code == "daily_spend_cap"
            else ("all tenants together", settings.global_daily_spend_usd)
        )
        detail = (
            f"{whose} estimated ${used / MICROS_PER_USD:.2f} of ${cap:.2f} for "
            f"{reservation.day} (UTC) and this job is estimated at "
            f"${reservation.spend_micros / MICROS_PER_USD:.2f}"
        )
    return LimitExceeded(
        f"{CAP_NAMES[code]} reached: {detail}; it starts again at 00:00 UTC",
        code=code,
        retry_after=math.ceil(seconds_to_utc_midnight(now)),
    )


def give_back(ctx: Context, reservation: Reservation | None) -> None:
    """Uncount a reservation whose job was not made after all."""
    if reservation is not None:
        quotas(ctx).give_back(reservation)


def daily_usage(ctx: Context, tenant: str) -> DailyUsage:
    """What `tenant` and every tenant together have reserved today (UTC)."""
    return quotas(ctx).usage(utc_day(clock.now()), tenant)


# --- pause / resume --------------------------------------------------------------------------


def paused_reason(reason: str) -> str:
    # Every tenant's waiting job shows this.
    return f"waiting: submission paused by an operator ({reason})"


def pause_submissions(ctx: Context, reason: str) -> bool:
    """Stop all submission to Runware: workers send nothing until `resume_submissions`; jobs
    keep being accepted and wait (to their deadline at most). True when this call paused."""
    reason = " ".join(admission.clean_text(reason, 200).split())
    paused = quotas(ctx).pause(reason or "no reason given")
    if paused:
        log.warning("submission paused by an operator", extra={"reason": reason})
    return paused


def resume_submissions(ctx: Context) -> int:
    """Start submission again and nudge every job the pause held; returns how many."""
    store = quotas(ctx)
    was_paused, held = store.resume()
    woken = 0
    # Only the jobs held before the switch went off: a new pause meanwhile holds its own.
    while woken < held:
        page = store.pop_held(min(WAKE_PAGE, held - woken))
        if not page:
            break
        for job_id in page:
            ctx.dispatcher.submit_job(job_id)
        woken += len(page)
    if was_paused or woken:
        log.warning("submission resumed by an operator", extra={"jobs_woken": woken})
    return woken


def submissions_paused(ctx: Context) -> SubmissionPause | None:
    """The operator's pause while it is on (its reason, since when, jobs held), else None."""
    return quotas(ctx).state()


def held_by_pause(ctx: Context, job_id: str) -> str | None:
    """Why `job_id` may not be submitted now (the operator's pause), queued to be woken when it
    ends; None while submission is on."""
    reason = quotas(ctx).hold(job_id)
    return None if reason is None else paused_reason(reason)
