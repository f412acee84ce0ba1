"""The Redis job store: the system of record for jobs and image slots, with atomic transitions."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline import events
from pipeline.config import Settings
from pipeline.logs import learn_task_uuid, learn_tenant
from pipeline.models import (
    JOB_TERMINAL,
    CircuitState,
    DeadLetter,
    Job,
    JobState,
    Slot,
    SlotState,
)
from pipeline.sentinel import master_client

log = logging.getLogger(__name__)

_PUBLISH = """
-- Appends an event to the stream, bounded by count (MAXLEN ~) and by age (MINID ~): XADD
-- takes one bound, XTRIM the other; '~' trims whole stream nodes only, so both stay cheap.
local function publish(stream, payload, max_length, oldest_id)
  redis.call('XADD', stream, 'MAXLEN', '~', max_length, '*', 'event', payload)
  redis.call('XTRIM', stream, 'MINID', '~', oldest_id)
end
local function as_json(value)
  if value then return cjson.encode(value) end
  return 'null'
end
"""

_COUNT = """
-- Adds to one tenant's counters of one UTC day (a hash) and names the tenant in that day's set,
-- both kept `ttl` seconds: pipeline/stats.py reads them. The counting step is the one that makes
-- the change it counts, so a replayed step counts nothing.
local function count(prefix, tenant, ttl, field, amount)
  if prefix == '' or not tenant then return end
  local key = prefix .. 'tenant:' .. tenant
  redis.call('HINCRBY', key, field, amount)
  redis.call('EXPIRE', key, ttl)
  redis.call('SADD', prefix .. 'tenants', tenant)
  redis.call('EXPIRE', prefix .. 'tenants', ttl)
end
"""

_CREATE_JOB = (
    _PUBLISH
    + _COUNT
    + """
-- KEYS: job, idempotency (or a placeholder when ARGV[3] is ''), tenant index, active set,
-- due set, event stream, slots... ARGV: fields, slot count, idempotency value, its ttl,
-- deadline, job key prefix, first due time, the job.created event, stream max length, oldest
-- stream id kept, the day's stats key prefix, its ttl.
if ARGV[3] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local job_id = string.match(existing, '^([^|]*)|')
    if redis.call('EXISTS', ARGV[6] .. job_id) == 1 then return existing end
  end
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, value) end
for i = 7, #KEYS do
  redis.call('HSET', KEYS[i], 'state', 'pending', 'slot', tostring(i - 7), 'attempt', '1',
             'job_id', fields['id'], 'updated_at', fields['created_at'])
end
redis.call('ZADD', KEYS[3], fields['created_at'], fields['id'])
redis.call('ZADD', KEYS[4], ARGV[5], fields['id'])
redis.call('ZADD', KEYS[5], ARGV[7], fields['id'])
publish(KEYS[6], ARGV[8], ARGV[9], ARGV[10])
count(ARGV[11], fields['tenant'], ARGV[12], 'created', 1)
count(ARGV[11], fields['tenant'], ARGV[12], 'images_requested', #KEYS - 6)
return ''
"""
)

_TRANSITION = (
    _PUBLISH
    + _COUNT
    + """
-- KEYS[1]: a job or slot hash; KEYS[2]: the due set; KEYS[3]: the event stream; KEYS[4]
-- (slots only): the slot's job; KEYS[5] (slots only, optional): the in-flight leases of the
-- API key. ARGV: allowed states, new state, expected task uuid, job id, due time, event ('':
-- none), stream max length, oldest stream id kept, the day's stats key prefix ('': nothing to
-- count), its ttl, the charge this step records in micro-USD, pairs...
-- A slot that leaves pending/submitted gives its task's lease back in the same step, so no
-- lease outlives the image it was taken for.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
local task = redis.call('HGET', KEYS[1], 'task_uuid')
if ARGV[3] ~= '' and task ~= ARGV[3] then
  return {0, state}
end
local allowed = false
for name in string.gmatch(ARGV[1], '[^,]+') do
  if name == state then allowed = true end
end
if not allowed then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
for i = 12, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
-- The day's counters: a job's end (from an open state only), an image stored, an image failed
-- (not a failed one failing again), and a provider's charge as its result is recorded (a
-- received image discarded later was counted when it was received).
if ARGV[9] ~= '' then
  if not KEYS[4] then
    if state == 'queued' or state == 'running' then
      count(ARGV[9], redis.call('HGET', KEYS[1], 'tenant'), ARGV[10], ARGV[2], 1)
    end
  else
    local tenant = redis.call('HGET', KEYS[4], 'tenant')
    if ARGV[2] == 'stored' and state ~= 'stored' then
      count(ARGV[9], tenant, ARGV[10], 'images_stored', 1)
    elseif (ARGV[2] == 'failed' or ARGV[2] == 'dead') and state ~= 'failed' and state ~= 'dead'
    then
      count(ARGV[9], tenant, ARGV[10], 'images_failed', 1)
    end
    if tonumber(ARGV[11]) > 0 and state ~= 'received' then
      count(ARGV[9], tenant, ARGV[10], 'spend_micros', tonumber(ARGV[11]))
    end
  end
end
if KEYS[5] and task and ARGV[2] ~= 'pending' and ARGV[2] ~= 'submitted' then
  redis.call('ZREM', KEYS[5], task)
end
-- What this write may leave to the reconciler (a silent task, an unstored image, a job whose
-- images all ended) waits at most the grace period: the job is due by then.
redis.call('ZADD', KEYS[2], 'XX', 'LT', ARGV[5], ARGV[4])
-- The event is published by the step that makes the change it reports, and only if it did:
-- no round trip of its own. An image's event gets what only the records hold: its job's
-- tenant, its taskUUID and, for an image that was not stored, its error code.
if ARGV[6] ~= '' then
  local payload = ARGV[6]
  if KEYS[4] then
    local known = ',"tenant":' .. as_json(redis.call('HGET', KEYS[4], 'tenant'))
      .. ',"taskUUID":' .. as_json(redis.call('HGET', KEYS[1], 'task_uuid'))
    if ARGV[2] ~= 'stored' then
      known = known .. ',"code":' .. as_json(redis.call('HGET', KEYS[1], 'error_code'))
    end
    payload = string.sub(payload, 1, -2) .. known .. '}'
  end
  publish(KEYS[3], payload, ARGV[7], ARGV[8])
end
return {1, state}
"""
)

_MINT_TASK = """
-- KEYS[1] slot, KEYS[2] task index of the candidate uuid, KEYS[3] due set.
-- ARGV: attempt, uuid, index value, ttl, job id, due time
local current = redis.call('HGET', KEYS[1], 'task_uuid')
if current and redis.call('HGET', KEYS[1], 'task_attempt') == ARGV[1] then return current end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return false end
if current then
  local previous = redis.call('HGET', KEYS[1], 'previous_task_uuids')
  if previous then previous = previous .. ',' .. current else previous = current end
  redis.call('HSET', KEYS[1], 'previous_task_uuids', previous)
end
redis.call('HSET', KEYS[1], 'task_uuid', ARGV[2], 'task_attempt', ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('ZADD', KEYS[3], 'XX', 'LT', ARGV[6], ARGV[5])
return ARGV[2]
"""

_NEW_ATTEMPT = """
-- KEYS[1] slot, KEYS[2] due set, KEYS[3] (optional) the in-flight leases. ARGV: allowed
-- states, expected task uuid ('' = any), attempt, job id, due time, pairs...
-- Reopens a slot for a new attempt and retires its taskUUID in the same step, so a late or
-- duplicate result of the old task can no longer match the slot; the retired task's lease is
-- given back with it.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local current = redis.call('HGET', KEYS[1], 'task_uuid')
if ARGV[2] ~= '' and current ~= ARGV[2] then return 0 end
local allowed = false
for name in string.gmatch(ARGV[1], '[^,]+') do
  if name == state then allowed = true end
end
if not allowed then return 0 end
if current then
  local previous = redis.call('HGET', KEYS[1], 'previous_task_uuids')
  if previous then previous = previous .. ',' .. current else previous = current end
  redis.call('HSET', KEYS[1], 'previous_task_uuids', previous)
  -- The retired attempt joins the slot's history (what `imagine status` shows): its code is
  -- the slot's own when it had ended (an operator's retry clears it), else the one this step
  -- writes (the failure that retires it).
  local given = {}
  for i = 6, #ARGV, 2 do given[ARGV[i]] = ARGV[i + 1] end
  local fields = redis.call('HMGET', KEYS[1], 'attempt', 'model', 'submitted_at', 'received_at',
                            'error_code', 'error_message', 'updated_at', 'history')
  local code, message = given['error_code'], given['error_message']
  if state == 'failed' or state == 'dead' then code, message = fields[5], fields[6] end
  local history = {}
  if fields[8] then history = cjson.decode(fields[8]) end
  -- A live task is retired for its failure (an error item or webhook, an account's or model's).
  local ended_as = state
  if state ~= 'failed' and state ~= 'dead' then ended_as = 'failed' end
  history[#history + 1] = {
    attempt = tonumber(fields[1] or '1'), taskUUID = current, state = ended_as,
    model = fields[2] or cjson.null, submittedAt = tonumber(fields[3] or '') or cjson.null,
    receivedAt = tonumber(fields[4] or '') or cjson.null,
    endedAt = tonumber((state == 'failed' or state == 'dead') and fields[7] or given['updated_at']
                       or '') or cjson.null,
    code = (code ~= '' and code) or cjson.null,
    message = (message and message ~= '' and string.sub(message, 1, 200)) or cjson.null}
  redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
  -- The model belonged to the retired task: a new attempt is sent on whichever model is chosen.
  redis.call('HDEL', KEYS[1], 'task_uuid', 'task_attempt', 'submitted_at', 'model')
  if KEYS[3] then redis.call('ZREM', KEYS[3], current) end
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempt', ARGV[3])
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('ZADD', KEYS[2], 'XX', 'LT', ARGV[5], ARGV[4])
return 1
"""

_ACQUIRE = """
-- KEYS[1] leases (zset member -> expiry), KEYS[2..] slot hashes.
-- ARGV: now, limit, expiry, then pairs (member, index in KEYS of its slot, or 0 if unknown).
-- A lease is granted only to a slot still pending under that taskUUID: a duplicate submit
-- holding an old copy of the job cannot take a lease for an image already in flight or ended
-- (and a lease left behind by a slot that moved on is dropped).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local granted = {}
for i = 4, #ARGV, 2 do
  local member = ARGV[i]
  local slot = tonumber(ARGV[i + 1])
  local live = true
  if slot > 0 then
    local state = redis.call('HGET', KEYS[slot], 'state')
    local mine = redis.call('HGET', KEYS[slot], 'task_uuid') == member
    live = mine and state == 'pending'
    if not mine or (state ~= 'pending' and state ~= 'submitted') then
      redis.call('ZREM', KEYS[1], member)
    end
  end
  if live then
    if redis.call('ZSCORE', KEYS[1], member) then
      table.insert(granted, member)
    elseif redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[1], ARGV[3], member)
      table.insert(granted, member)
    end
  end
end
return granted
"""


_READ_JOB = """
-- KEYS[1]: a job hash. Its fields, then each slot's, in one round trip: every step of an image
-- reads its job. The slot keys follow from the job's (KEYS[1] .. ':slot:' .. n), so they are
-- not passed in: the store lives on one Redis (Celery's Redis transport has no Cluster support).
local job = redis.call('HGETALL', KEYS[1])
if #job == 0 then return {} end
local count = tonumber(redis.call('HGET', KEYS[1], 'slot_count')) or 0
local rows = {job}
for n = 0, count - 1 do
  rows[n + 2] = redis.call('HGETALL', KEYS[1] .. ':slot:' .. n)
end
return rows
"""

_LOCATE_TASK = """
-- KEYS[1]: a taskUUID's index key. ARGV[1]: the prefix of job keys; ARGV[2..]: the slot fields
-- to read. Where the task belongs ('<job id>:<slot>'), those fields of that slot and its job's
-- state, in one round trip: a webhook needs all three before it can tell a first result from
-- a replay.
local location = redis.call('GET', KEYS[1])
if not location then return false end
local job_id, slot = string.match(location, '^(.*):(%d+)$')
if not job_id then return {location, {}, false} end
local job_key = ARGV[1] .. job_id
return {location, redis.call('HMGET', job_key .. ':slot:' .. slot, unpack(ARGV, 2)),
        redis.call('HGET', job_key, 'state')}
"""

_RELEASE_AND_WAKE = """
-- KEYS[1] leases, KEYS[2] jobs waiting for one. ARGV: now, limit, members...
-- Gives leases back, drops lapsed ones, and pops as many waiting jobs as there is room for.
for i = 3, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if room <= 0 then return {} end
local popped = redis.call('ZPOPMIN', KEYS[2], room)
local woken = {}
for i = 1, #popped, 2 do woken[#woken + 1] = popped[i] end
return woken
"""

_CLAIM_DUE = """
-- KEYS[1] due set, KEYS[2] active set. ARGV: now, limit, end of the claim.
-- The jobs due by now, earliest first, as (id, deadline) pairs. Each is claimed: its due time
-- moves to the end of the claim (its deadline if sooner), so a pass that dies before looking
-- at a job leaves it due again then, as a message's visibility timeout would; the look lowers
-- it to what the job needs next. A member that left the active set is dropped.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local rows = {}
for _, id in ipairs(ids) do
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline then
    local claim = ARGV[3]
    if tonumber(deadline) < tonumber(claim) then claim = deadline end
    redis.call('ZADD', KEYS[1], 'XX', claim, id)
    rows[#rows + 1] = id
    rows[#rows + 1] = deadline
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return rows
"""

_BACKFILL_DUE = """
-- KEYS[1] active set, KEYS[2] due set. ARGV: start, count.
-- One page of the active set: a job without a due time gets 0 (due now).
local last = tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], last)
local added = 0
for _, id in ipairs(ids) do
  added = added + redis.call('ZADD', KEYS[2], 'NX', 0, id)
end
return added
"""


# A day's counters (pipeline/stats.py) are kept this long: a month of days to look back on.
STATS_TTL_SECONDS = 35 * 86400
# The slot states whose reaching is counted (an image stored, an image failed).
_COUNTED_SLOT_STATES = frozenset({SlotState.STORED, SlotState.FAILED, SlotState.DEAD})


def stats_day(ts: float) -> str:
    """The UTC day a counter counts a step in: YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


# What intake reads of a slot to tell a first result from a replay and act on it
# (pipeline/intake.py record_one and what it calls): a webhook reads these, not the ~30 fields.
LOCATED_SLOT_FIELDS = ("job_id", "slot", "state", "attempt", "task_uuid", "error_code", "model")


def leases_key(api_key: str, namespace: str = "imagine") -> str:
    """The sorted set of one Runware API key's in-flight leases."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"{namespace}:inflight:{digest}"


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _text(raw: Any) -> dict[str, str]:
    """A hash as read with decode_responses (redis-py types it loosely)."""
    return {str(key): str(value) for key, value in dict(raw).items()}


def _pairs(flat: Any) -> dict[str, str]:
    """A hash as a script returns it: a flat list of names and values."""
    items = [str(item) for item in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _scored(rows: Any) -> list[tuple[str, float]]:
    """Sorted-set members read with their scores."""
    return [(str(member), float(score)) for member, score in rows]


def _float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _int(raw: str | None) -> int | None:
    return int(raw) if raw else None


def slot_from_hash(raw: dict[str, str]) -> Slot:
    previous = raw.get("previous_task_uuids")
    nsfw = raw.get("nsfw")
    return Slot(
        job_id=raw["job_id"],
        slot=int(raw["slot"]),
        state=SlotState(raw["state"]),
        attempt=int(raw.get("attempt") or 1),
        task_uuid=raw.get("task_uuid") or None,
        task_attempt=_int(raw.get("task_attempt")),
        previous_task_uuids=previous.split(",") if previous else [],
        submitted_at=_float(raw.get("submitted_at")),
        received_at=_float(raw.get("received_at")),
        stored_at=_float(raw.get("stored_at")),
        updated_at=_float(raw.get("updated_at")),
        image_uuid=raw.get("image_uuid") or None,
        image_url=raw.get("image_url") or None,
        seed=_int(raw.get("seed")),
        cost=_float(raw.get("cost")),
        nsfw=None if not nsfw else nsfw == "1",
        error_code=raw.get("error_code") or None,
        error_message=raw.get("error_message") or None,
        final_key=raw.get("final_key") or None,
        width=_int(raw.get("width")),
        height=_int(raw.get("height")),
        size=_int(raw.get("size")),
        etag=raw.get("etag") or None,
        format=raw.get("format") or None,
        requested_width=_int(raw.get("requested_width")),
        requested_height=_int(raw.get("requested_height")),
        requested_format=raw.get("requested_format") or None,
        model=raw.get("model") or None,
        history=json.loads(raw["history"]) if raw.get("history") else [],
        size_mismatch=_flag(raw.get("size_mismatch")),
        format_mismatch=_flag(raw.get("format_mismatch")),
    )


def _flag(raw: str | None) -> bool | None:
    return None if not raw else raw == "1"


def job_to_hash(job: Job) -> dict[str, str]:
    values = {
        "id": job.id,
        "tenant": job.tenant,
        "state": job.state,
        "model": job.model,
        "fallback_model": job.fallback_model,
        "params": job.params,
        "slot_count": job.slot_count,
        "output_format": job.output_format,
        "created_at": repr(job.created_at),
        "updated_at": repr(job.updated_at),
        "deadline_at": repr(job.deadline_at),
        "reason": job.reason,
        "client_task_uuid": job.client_task_uuid,
        "idempotency_key": job.idempotency_key,
        "callback_url": job.callback_url,
        "metadata": job.metadata,
        "manifest_version": job.manifest_version,
    }
    return {key: _encode(value) for key, value in values.items() if value is not None}


def job_from_hash(raw: dict[str, str], slots: list[Slot]) -> Job:
    return Job(
        id=raw["id"],
        tenant=raw["tenant"],
        state=JobState(raw["state"]),
        model=raw["model"],
        fallback_model=raw.get("fallback_model") or None,
        params=json.loads(raw["params"]),
        slot_count=int(raw["slot_count"]),
        output_format=raw["output_format"],
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        deadline_at=float(raw["deadline_at"]),
        reason=raw.get("reason") or None,
        client_task_uuid=raw.get("client_task_uuid") or None,
        idempotency_key=raw.get("idempotency_key") or None,
        callback_url=raw.get("callback_url") or None,
        metadata=json.loads(raw.get("metadata") or "{}"),
        manifest_key=raw.get("manifest_key") or None,
        manifest_version=int(raw.get("manifest_version") or 0),
        ended_at=_float(raw.get("ended_at")),
        slots=slots,
    )


def redis_waits(*, request_path: bool = False) -> dict[str, Any]:
    """How long a client waits for Redis. redis-py's default retries a failed command 10 times
    with backoff (seconds in all): a worker's task may wait that out, but on the request path
    (an HTTP caller waiting) one reconnect is tried at once, so a Redis that is down answers
    503 in well under a second."""
    if request_path:
        # One retry, at once, of a lost connection only: it reconnects a pooled connection
        # Redis closed (a restart); a Redis that does not answer in time is not asked twice.
        once = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        return {"socket_timeout": 0.3, "socket_connect_timeout": 0.3, "retry": once}
    return {"socket_timeout": 10, "socket_connect_timeout": 5}


def redis_client(settings: Settings, *, request_path: bool = False) -> redis.Redis:
    """One client per process for the pipeline's records (decoded strings, bounded waits)."""
    # Behind Sentinel: the same options, for whichever server is the master (docs/redis.md).
    connect = (
        partial(master_client, settings)
        if settings.redis_sentinels
        else partial(redis.Redis.from_url, settings.redis_url)
    )
    return connect(
        decode_responses=True,
        health_check_interval=30,
        **redis_waits(request_path=request_path),
    )


class RedisJobStore:
    """Jobs, slots, the taskUUID index, idempotency keys and leases, all in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_seconds: int = 7 * 86400,
        namespace: str = "imagine",
        api_key: str | None = None,
        reconcile_grace_seconds: float = 60,
        replica_acks: int = 0,
        replica_wait_ms: int = 1000,
    ) -> None:
        self.redis = client
        # Replicas that must hold a job's creation and a slot's taskUUID before either is
        # relied on (0: none asked; see `_replicated`).
        self.replica_acks = replica_acks
        self.replica_wait_ms = replica_wait_ms
        self.retention_seconds = retention_seconds
        self.ns = namespace
        # How long a write may wait for the reconciler: each write makes its job due by then.
        self.reconcile_grace_seconds = reconcile_grace_seconds
        # The leases a slot gives back when it stops being in flight (None: no Runware key).
        self.leases_key = leases_key(api_key, namespace) if api_key else None
        self._create = client.register_script(_CREATE_JOB)
        self._transition = client.register_script(_TRANSITION)
        self._mint = client.register_script(_MINT_TASK)
        self._new_attempt = client.register_script(_NEW_ATTEMPT)
        self._read_job = client.register_script(_READ_JOB)
        self._locate_task = client.register_script(_LOCATE_TASK)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._backfill_due = client.register_script(_BACKFILL_DUE)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> RedisJobStore:
        return cls(
            client or redis_client(settings),
            retention_seconds=settings.job_retention_seconds,
            api_key=settings.runware_api_key.reveal() or None,
            reconcile_grace_seconds=settings.reconcile_grace_seconds,
            replica_acks=settings.redis_replica_acks,
            replica_wait_ms=settings.redis_replica_wait_ms,
        )

    def _replicated(self) -> None:
        """Wait until `replica_acks` replicas hold every write made so far, or raise a
        retryable error. Replication is asynchronous: a write the master acknowledged can vanish
        when a replica is promoted before receiving it. A vanished job would be lost after its
        202, and a vanished taskUUID would be minted afresh and paid for twice. The marker write
        goes on the same connection as WAIT, and the replication stream is ordered, so its
        acknowledgement covers this process's earlier writes on any connection."""
        if not self.replica_acks:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(f"{self.ns}:replication:mark")
        pipe.wait(self.replica_acks, self.replica_wait_ms)
        _, acked = pipe.execute()
        if int(acked) < self.replica_acks:
            raise redis.TimeoutError(
                f"{acked} of {self.replica_acks} Redis replicas confirmed a write "
                f"within {self.replica_wait_ms} ms (REDIS_REPLICA_ACKS)"
            )

    # --- keys ---
    def job_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def slot_key(self, job_id: str, slot: int) -> str:
        return f"{self.ns}:job:{job_id}:slot:{slot}"

    def task_key(self, task_uuid: str) -> str:
        return f"{self.ns}:task:{task_uuid}"

    def tenant_key(self, tenant: str) -> str:
        return f"{self.ns}:tenant:{tenant}:jobs"

    @property
    def active_key(self) -> str:
        return f"{self.ns}:active"

    @property
    def due_key(self) -> str:
        """Active jobs by the earliest time the reconciler may have something to do for each.

        A write only moves that time earlier (LT) and never adds a job (XX): a job enters with
        its creation or reopening and leaves with the active set, so a late write to an ended
        job cannot bring it back.
        """
        return f"{self.ns}:due"

    def _due_after_write(self) -> str:
        return repr(time.time() + self.reconcile_grace_seconds)

    @property
    def events_key(self) -> str:
        return f"{self.ns}:events"

    def stats_prefix(self, day: str) -> str:
        """The keys of one UTC day's counters: `<prefix>tenant:<tenant>` (a hash per tenant)
        and `<prefix>tenants` (the set of tenants counted that day)."""
        return f"{self.ns}:stats:{day}:"

    def _stats_args(self, counted: bool) -> list[str]:
        if not counted:
            return ["", "0"]
        return [self.stats_prefix(stats_day(time.time())), str(STATS_TTL_SECONDS)]

    def idempotency_key(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.ns}:idem:{tenant}:{digest}"

    # --- jobs ---
    def create_job(self, job: Job, body_hash: str) -> tuple[str, str | None]:
        """Write a new job unless the tenant's idempotency key names one already.

        Returns (job id, stored body hash): the new job's id and None, or the earlier job's id
        and the hash of the body that created it.
        """
        idem = job.idempotency_key
        keys = [
            self.job_key(job.id),
            self.idempotency_key(job.tenant, idem) if idem else f"{self.ns}:idem:-",
            self.tenant_key(job.tenant),
            self.active_key,
            self.due_key,
            self.events_key,
        ]
        keys += [self.slot_key(job.id, n) for n in range(job.slot_count)]
        now = time.time()
        existing = self._create(
            keys=keys,
            args=[
                json.dumps(job_to_hash(job)),
                job.slot_count,
                f"{job.id}|{body_hash}" if idem else "",
                self.retention_seconds,
                repr(job.deadline_at),
                f"{self.ns}:job:",
                repr(min(job.deadline_at, now + self.reconcile_grace_seconds)),
                *self._event_args(events.created_event(job), now),
                *self._stats_args(True),
            ],
        )
        self._replicated()
        if existing:
            job_id, _, stored_hash = str(existing).partition("|")
            return job_id, stored_hash
        return job.id, None

    def get_job(self, job_id: str) -> Job | None:
        rows = self._read_job(keys=[self.job_key(job_id)])
        if not rows:
            return None
        slots = [slot_from_hash(_pairs(row)) for row in rows[1:] if row]
        job = job_from_hash(_pairs(rows[0]), slots)
        learn_tenant(job.id, job.tenant)  # log lines about the job name its tenant
        return job

    def slot_and_job_state(self, job_id: str, slot: int) -> tuple[Slot | None, JobState | None]:
        """A slot and its job's state, read in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.slot_key(job_id, slot))
        pipe.hget(self.job_key(job_id), "state")
        raw, state = pipe.execute()
        found = _text(raw)
        return (slot_from_hash(found) if found else None), (JobState(str(state)) if state else None)

    def get_slot(self, job_id: str, slot: int) -> Slot | None:
        raw = _text(self.redis.hgetall(self.slot_key(job_id, slot)))
        if not raw:
            return None
        found = slot_from_hash(raw)
        learn_task_uuid(job_id, slot, found.task_uuid)  # log lines about the slot name it
        return found

    def job_state(self, job_id: str) -> JobState | None:
        value = self.redis.hget(self.job_key(job_id), "state")
        return JobState(str(value)) if value else None

    def set_job_fields(
        self, job_id: str, *, event: dict[str, Any] | None = None, **values: Any
    ) -> None:
        """Write fields of an existing job; `event` is published in the same transaction."""
        key = self.job_key(job_id)
        if not self.redis.exists(key):
            return
        pipe = self.redis.pipeline()
        for name, value in values.items():
            if value is None:
                pipe.hdel(key, name)
            else:
                pipe.hset(key, name, _encode(value))
        pipe.hset(key, "updated_at", repr(time.time()))
        pipe.zadd(self.due_key, {job_id: self._due_after_write()}, xx=True, lt=True)
        if event is not None:
            self._publish(pipe, event)
        pipe.execute()

    def transition_job(
        self,
        job_id: str,
        allowed: Iterable[JobState],
        to: JobState,
        *,
        event: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        """Move a job to `to` from an allowed state; `event` is published only if it moved."""
        values.setdefault("updated_at", repr(time.time()))
        keys = [self.job_key(job_id), self.due_key, self.events_key]
        counted = self._stats_args(to in JOB_TERMINAL)
        return self._apply(keys, job_id, allowed, to, "", values, event, [*counted, "0"])

    def transition_slot(
        self,
        job_id: str,
        slot: int,
        allowed: Iterable[SlotState],
        to: SlotState,
        *,
        task_uuid: str | None = None,
        **values: Any,
    ) -> bool:
        """Move a slot to `to` from an allowed state (under `task_uuid`, when given). A move to
        stored, failed, dead or discarded publishes its image event in the same step."""
        values.setdefault("updated_at", repr(time.time()))
        keys = [
            self.slot_key(job_id, slot),
            self.due_key,
            self.events_key,
            self.job_key(job_id),
            *self._leases(),
        ]
        event = events.slot_event(
            job_id, slot, to, float(values["updated_at"]), values.get("final_key")
        )
        # A provider's charge is counted as the step recording its result writes it.
        charge = round(float(values["cost"]) * 1_000_000) if values.get("cost") else 0
        counted = self._stats_args(to in _COUNTED_SLOT_STATES or charge > 0)
        return self._apply(
            keys, job_id, allowed, to, task_uuid or "", values, event, [*counted, str(charge)]
        )

    def _leases(self) -> list[str]:
        return [self.leases_key] if self.leases_key else []

    def _apply(
        self,
        keys: list[str],
        job_id: str,
        allowed: Iterable[str],
        to: str,
        task_uuid: str,
        values: dict[str, Any],
        event: dict[str, Any] | None,
        counted: list[str],
    ) -> bool:
        args: list[str] = [",".join(allowed), to, task_uuid, job_id, self._due_after_write()]
        if event is None:
            args += ["", "", ""]
        else:
            args += self._event_args(event, time.time())
        args += counted  # the day's stats key prefix, its ttl, the charge (pipeline/stats.py)
        for name, value in values.items():
            args += [name, _encode(value)]
        applied, _previous = self._transition(keys=keys, args=args)
        return bool(applied)

    def mint_task_uuid(self, job_id: str, slot: int, attempt: int, candidate: str) -> str | None:
        """Persist a taskUUID for this attempt of a slot, or return the one already minted."""
        result = self._mint(
            keys=[self.slot_key(job_id, slot), self.task_key(candidate), self.due_key],
            args=[
                attempt,
                candidate,
                f"{job_id}:{slot}",
                self.retention_seconds,
                job_id,
                self._due_after_write(),
            ],
        )
        # The taskUUID must outlive a failover before Runware sees it (`_replicated`).
        self._replicated()
        return str(result) if result else None

    def new_attempt(
        self,
        job_id: str,
        slot: int,
        allowed: Iterable[SlotState],
        attempt: int,
        *,
        task_uuid: str | None = None,
        **values: Any,
    ) -> bool:
        """Reopen a slot as `pending` for `attempt`, retiring its current taskUUID."""
        values.setdefault("updated_at", repr(time.time()))
        args: list[str] = [
            ",".join(allowed),
            task_uuid or "",
            str(attempt),
            job_id,
            self._due_after_write(),
        ]
        for name, value in values.items():
            args += [name, _encode(value)]
        keys = [self.slot_key(job_id, slot), self.due_key, *self._leases()]
        return bool(self._new_attempt(keys=keys, args=args))

    def locate_task(self, task_uuid: str) -> tuple[str, int, Slot | None, JobState | None] | None:
        """Where a taskUUID belongs (job, slot), with that slot and its job's state, in one
        round trip; None for a taskUUID the pipeline never minted.

        The slot carries only LOCATED_SLOT_FIELDS, what intake decides a result by; its other
        fields are None (read the whole slot with `get_slot`)."""
        found = self._locate_task(
            keys=[self.task_key(task_uuid)], args=[self.job_key(""), *LOCATED_SLOT_FIELDS]
        )
        if not found:
            return None
        location, raw, state = found
        job_id, _, slot = str(location).rpartition(":")
        fields = {
            name: value
            for name, value in zip(LOCATED_SLOT_FIELDS, raw or [], strict=False)
            if value
        }
        return (
            job_id,
            int(slot),
            slot_from_hash(fields) if fields else None,
            JobState(str(state)) if state else None,
        )

    def find_task(self, task_uuid: str) -> tuple[str, int] | None:
        value = self.redis.get(self.task_key(task_uuid))
        if not value:
            return None
        job_id, _, slot = str(value).rpartition(":")
        return job_id, int(slot)

    def retire_job(self, job_id: str, job: Job | None = None) -> None:
        """Give a terminal job's records their retention TTL and drop it from the active and due
        sets (`job`: the ended job as the caller read it, so it is not read again)."""
        job = job or self.get_job(job_id)
        if job is None:
            return
        pipe = self.redis.pipeline()
        pipe.zrem(self.active_key, job_id)
        pipe.zrem(self.due_key, job_id)
        pipe.expire(self.job_key(job_id), self.retention_seconds)
        for slot in job.slots:
            pipe.expire(self.slot_key(job_id, slot.slot), self.retention_seconds)
            for task_uuid in [slot.task_uuid, *slot.previous_task_uuids]:
                if task_uuid:
                    pipe.expire(self.task_key(task_uuid), self.retention_seconds)
        pipe.execute()

    def forget_job(self, job_id: str) -> None:
        """Drop a job whose record expired from the active and due sets."""
        pipe = self.redis.pipeline()
        pipe.zrem(self.active_key, job_id)
        pipe.zrem(self.due_key, job_id)
        pipe.execute()

    def active_count(self) -> int:
        return int(self.redis.zcard(self.active_key))

    @contextmanager
    def exclusive(self, name: str, ttl: float) -> Iterator[bool]:
        """Hold a lock across every process for at most `ttl` seconds; yields whether it was
        taken (False: someone else holds it, do nothing)."""
        lock = self.redis.lock(f"{self.ns}:{name}:lock", timeout=ttl, blocking=False)
        acquired = bool(lock.acquire())
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    lock.release()
                except redis.exceptions.LockError:
                    log.info("lock %s expired before its release", name)

    def active_jobs(self, page: int = 1000) -> Iterator[tuple[str, float]]:
        """Every job not yet ended, earliest deadline first, read a page at a time."""
        start = 0
        while True:
            rows = _scored(
                self.redis.zrange(self.active_key, start, start + page - 1, withscores=True)
            )
            yield from rows
            if len(rows) < page:
                return
            start += page

    def claim_due_jobs(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` jobs due by `now`, earliest first, with their deadlines; each is claimed
        until `now` plus the grace period (its deadline if sooner), when it is due again unless
        `mark_due` or a write sets an earlier time."""
        claim = repr(now + self.reconcile_grace_seconds)
        flat = self._claim_due(keys=[self.due_key, self.active_key], args=[repr(now), limit, claim])
        return [(job_id, float(deadline)) for job_id, deadline in _pairs(flat).items()]

    def mark_due(self, times: dict[str, float]) -> None:
        """Make each job due by its time at the latest; an earlier time stays, and a job that
        has left the due set is not added back."""
        if times:
            self.redis.zadd(self.due_key, dict(times), xx=True, lt=True)

    def backfill_due(self, page: int = 1000) -> int:
        """Give each active job without a due time one of 0 (due now); returns how many.

        Every path that adds a job to the active set adds it to the due set in the same step,
        so a missing one is a job written before the due index existed, or by a process still
        running code from before it. Two ZCARDs tell whether any is missing; only then is the
        active set walked, a page per script call.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.active_key)
        pipe.zcard(self.due_key)
        active, due = (int(count) for count in pipe.execute())
        if due >= active:
            return 0
        keys = [self.active_key, self.due_key]
        return sum(
            int(self._backfill_due(keys=keys, args=[start, page]))
            for start in range(0, active, page)
        )

    def list_jobs(
        self,
        tenant: str,
        *,
        state: JobState | None = None,
        cursor: float | None = None,
        limit: int = 50,
        since: float | None = None,
    ) -> tuple[list[Job], float | None]:
        """A tenant's jobs, newest first; `cursor` is the createdAt to continue below, `since`
        the earliest createdAt listed (the index's score: a window bounds what is read)."""
        high: float | str = "+inf" if cursor is None else f"({cursor!r}"
        low = "-inf" if since is None else repr(since)
        jobs: list[Job] = []
        next_cursor: float | None = None
        while len(jobs) < limit:
            rows = _scored(
                self.redis.zrevrangebyscore(
                    self.tenant_key(tenant), high, low, start=0, num=limit * 2, withscores=True
                )
            )
            if not rows:
                break
            for job_id, score in rows:
                next_cursor = float(score)
                job = self.get_job(str(job_id))
                if job is None:
                    self.redis.zrem(self.tenant_key(tenant), job_id)
                    continue
                if state is None or job.state == state:
                    jobs.append(job)
                if len(jobs) == limit:
                    break
            high = f"({next_cursor!r}"
        more = next_cursor is not None and bool(
            self.redis.zcount(self.tenant_key(tenant), low, f"({next_cursor!r}")
        )
        return jobs, next_cursor if more else None

    # --- operators: dead letters and reopening ---
    @property
    def dlq_key(self) -> str:
        return f"{self.ns}:dlq"

    def dead_letter(self, job_id: str, slot: int, code: str, message: str) -> None:
        entry = json.dumps(
            {
                "jobId": job_id,
                "slot": slot,
                "code": code,
                "message": message[:500],
                "at": time.time(),
            },
            sort_keys=True,
        )
        pipe = self.redis.pipeline()
        pipe.hset(self.dlq_key, f"{job_id}:{slot}", entry)
        pipe.execute()

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        entries = [json.loads(value) for value in self.redis.hvals(self.dlq_key)]
        return [
            DeadLetter(
                job_id=entry["jobId"],
                slot=int(entry["slot"]),
                code=entry["code"],
                message=entry["message"],
                at=float(entry["at"]),
            )
            for entry in sorted(entries, key=lambda entry: entry["at"])[:limit]
        ]

    def remove_dead_letter(self, job_id: str, slot: int) -> None:
        self.redis.hdel(self.dlq_key, f"{job_id}:{slot}")

    def reopen_job(self, job_id: str, deadline_at: float, manifest_version: int) -> None:
        """Move an ended job back to running (an operator's retry) and make it active again."""
        key = self.job_key(job_id)
        pipe = self.redis.pipeline()
        pipe.persist(key)
        pipe.hset(
            key,
            mapping={
                "state": JobState.RUNNING,
                "deadline_at": repr(deadline_at),
                "manifest_version": str(manifest_version),
                "updated_at": repr(time.time()),
                "reason": "retried by an operator",
            },
        )
        pipe.hdel(key, "ended_at")
        pipe.zadd(self.active_key, {job_id: deadline_at})
        due = min(deadline_at, time.time() + self.reconcile_grace_seconds)
        pipe.zadd(self.due_key, {job_id: due}, lt=True)
        raw_count = self.redis.hget(key, "slot_count")
        for n in range(int(raw_count or 0)):
            pipe.persist(self.slot_key(job_id, n))
        pipe.execute()

    @property
    def mismatches_key(self) -> str:
        return f"{self.ns}:mismatches"

    def count_mismatch(self, kind: str) -> None:
        """Count one stored image whose `kind` ("size" or "format") differs from the request."""
        self.redis.hincrby(self.mismatches_key, kind, 1)

    def mismatches(self) -> dict[str, int]:
        raw = _text(self.redis.hgetall(self.mismatches_key))
        return {kind: int(count) for kind, count in raw.items()}

    # --- lifecycle events (pipeline/events.py) ---
    @staticmethod
    def _event_args(event: dict[str, Any], now: float) -> list[str]:
        """A script's arguments for one event: its JSON, the stream's bounds."""
        return [events.encode(event), str(events.EVENTS_MAX_LENGTH), events.oldest_kept_id(now)]

    def _publish(self, pipe: Any, event: dict[str, Any]) -> None:
        """Queue an event on a pipeline, with both bounds of the stream."""
        pipe.xadd(
            self.events_key,
            {"event": events.encode(event)},
            maxlen=events.EVENTS_MAX_LENGTH,
            approximate=True,
        )
        pipe.xtrim(self.events_key, minid=events.oldest_kept_id(time.time()), approximate=True)

    def publish_event(self, event: dict[str, Any]) -> None:
        """Publish an event on its own (one round trip); a step that changes a record publishes
        its event with the change instead."""
        pipe = self.redis.pipeline(transaction=False)
        self._publish(pipe, event)
        pipe.execute()

    def last_event_id(self) -> str:
        """The id of the newest event ("0-0" when there is none): where reading new ones starts."""
        newest = self.redis.xrevrange(self.events_key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    def read_events(
        self, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `count` events after the id `after`, waiting up to `block_ms` for the first
        (None: not at all)."""
        answer: Any = self.redis.xread({self.events_key: after}, count=count, block=block_ms)
        return [
            (str(entry_id), json.loads(fields["event"]))
            for _stream, entries in answer or []
            for entry_id, fields in entries
        ]

    def ping(self) -> bool:
        return bool(self.redis.ping())


class RedisInFlightBudget:
    """Leases of one Runware API key in a sorted set (member: taskUUID, score: expiry), so a
    crashed worker's lease lapses; jobs waiting for a lease queue up to be woken in order."""

    def __init__(self, client: redis.Redis, api_key: str, *, namespace: str = "imagine") -> None:
        self.redis = client
        self.ns = namespace
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
        self.leases_key = leases_key(api_key, namespace)
        self.waiters_key = f"{namespace}:budget-waiters:{digest}"
        self._acquire = client.register_script(_ACQUIRE)
        self._release_and_wake = client.register_script(_RELEASE_AND_WAKE)

    def acquire(self, members: list[str], limit: int, ttl: float) -> list[str]:
        """Grant leases up to `limit` across every worker; already held ones count. A member
        that is a known taskUUID is granted only while its slot is pending under it."""
        if not members:
            return []
        # The taskUUID -> slot index never changes once written, so reading it first is safe.
        places = self.redis.mget([f"{self.ns}:task:{member}" for member in members])
        keys = [self.leases_key]
        args: list[str] = []
        for member, place in zip(members, places, strict=True):
            job_id, _, slot = str(place or "").rpartition(":")
            if place and job_id:
                keys.append(f"{self.ns}:job:{job_id}:slot:{slot}")
                args += [member, str(len(keys))]
            else:
                args += [member, "0"]
        now = time.time()
        granted = self._acquire(keys=keys, args=[repr(now), limit, repr(now + ttl), *args])
        return [str(member) for member in granted]

    def release(self, members: list[str]) -> int:
        """Give leases back; returns how many were still held."""
        if not members:
            return 0
        return int(self.redis.zrem(self.leases_key, *members))

    def release_and_wake(self, members: list[str], limit: int) -> list[str]:
        """Give leases back and pop the jobs waiting for one that now fit under `limit`, in one
        round trip (the oldest first)."""
        woken = self._release_and_wake(
            keys=[self.leases_key, self.waiters_key], args=[repr(time.time()), limit, *members]
        )
        return [str(job_id) for job_id in woken]

    def wait(self, job_id: str) -> None:
        """Queue a job to be woken when a lease is given back (oldest first)."""
        self.redis.zadd(self.waiters_key, {job_id: time.time()}, nx=True)

    def pop_waiters(self, count: int) -> list[str]:
        if count <= 0:
            return []
        return [member for member, _ in _scored(self.redis.zpopmin(self.waiters_key, count))]

    def in_use(self) -> int:
        self.redis.zremrangebyscore(self.leases_key, "-inf", repr(time.time()))
        return int(self.redis.zcard(self.leases_key))


class RedisCircuit:
    """The account circuit in one hash, and one hash per paused model beside it (listed in a
    set); each empty while closed."""

    def __init__(self, client: redis.Redis, *, namespace: str = "imagine") -> None:
        self.redis = client
        self.key = f"{namespace}:circuit"
        self.models_key = f"{namespace}:circuit-models"

    def _key(self, model: str | None) -> str:
        return f"{self.key}:model:{model}" if model else self.key

    def state(self, model: str | None = None) -> CircuitState:
        raw = _text(self.redis.hgetall(self._key(model)))
        if raw.get("state") != "open":
            return CircuitState(model=model)
        return CircuitState(
            open=True,
            code=raw.get("code"),
            message=raw.get("message"),
            opened_at=_float(raw.get("opened_at")),
            probe_at=_float(raw.get("probe_at")),
            model=model,
        )

    def open(self, code: str, message: str, probe_at: float, model: str | None = None) -> bool:
        """Open (or keep open) the account's circuit, or one model's; True when this call
        opened it."""
        key = self._key(model)
        opened = bool(self.redis.hsetnx(key, "opened_at", repr(time.time())))
        pipe = self.redis.pipeline()
        pipe.hset(
            key,
            mapping={"state": "open", "code": code, "message": message, "probe_at": repr(probe_at)},
        )
        if model:
            pipe.sadd(self.models_key, model)
        pipe.execute()
        return opened

    def open_models(self) -> list[CircuitState]:
        """Every model circuit now open."""
        models = sorted(str(model) for model in self.redis.smembers(self.models_key))
        states = [self.state(model) for model in models]
        return [state for state in states if state.open]

    def schedule_probe(self, at: float, model: str | None = None) -> None:
        self.redis.hset(self._key(model), "probe_at", repr(at))

    def reset(self, model: str | None = None) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._key(model))
        if model:
            pipe.srem(self.models_key, model)
        pipe.execute()
