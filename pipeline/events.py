"""Lifecycle events of jobs and images on a Redis stream: their shapes, bounds and reader."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pipeline.clock import iso
from pipeline.models import Job, JobState, SlotState

if TYPE_CHECKING:
    from pipeline.context import Context

JOB_CREATED = "job.created"
IMAGE_STORED = "image.stored"
IMAGE_FAILED = "image.failed"
JOB_ENDED = "job.ended"

# The stream holds about this many entries at most (XADD MAXLEN ~) ...
EVENTS_MAX_LENGTH = 100_000
# ... and none much older than this (XTRIM MINID ~). A reader away for longer has missed
# events: the manifests in S3 are the durable record, the stream only a live feed.
EVENTS_RETENTION_SECONDS = 24 * 3600

# The slot states whose transition is announced, and the type of the event.
SLOT_EVENTS = {
    SlotState.STORED: IMAGE_STORED,
    SlotState.FAILED: IMAGE_FAILED,
    SlotState.DEAD: IMAGE_FAILED,
    SlotState.DISCARDED: IMAGE_FAILED,
}


def created_event(job: Job) -> dict[str, Any]:
    """A job was recorded (not for an enqueue answered from its idempotency key)."""
    return {
        "type": JOB_CREATED,
        "jobId": job.id,
        "tenant": job.tenant,
        "at": iso(job.created_at),
        "model": job.model,
        "images": job.slot_count,
    }


def slot_event(
    job_id: str, slot: int, state: str, at: float, key: str | None = None
) -> dict[str, Any] | None:
    """The part of an image's event that its transition knows, or None for a state that is not
    announced. The store's script completes it from the records, in the same step: `tenant`
    (the job's), `taskUUID` (the slot's), and `code` (the slot's error code) unless stored."""
    kind = SLOT_EVENTS.get(SlotState(state))
    if kind is None:
        return None
    event: dict[str, Any] = {"type": kind, "jobId": job_id, "slot": slot, "at": iso(at)}
    if kind == IMAGE_STORED:
        event["key"] = key
    else:
        event["state"] = state
    return event


def ended_event(
    job: Job, state: JobState, manifest_key: str, version: int, at: float
) -> dict[str, Any]:
    """A job's manifest was written: when it ends, and again with a higher version when it is
    rewritten (a late result discarded, a job an operator reopened ending again)."""
    counts = Counter(str(slot.state) for slot in job.slots)
    return {
        "type": JOB_ENDED,
        "jobId": job.id,
        "tenant": job.tenant,
        "at": iso(at),
        "state": state,
        "images": len(job.slots),
        "stored": counts[SlotState.STORED],
        "failed": counts[SlotState.FAILED],
        "dead": counts[SlotState.DEAD],
        "discarded": counts[SlotState.DISCARDED],
        "cost": job.cost or 0.0,
        "manifestKey": manifest_key,
        "manifestVersion": version,
    }


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def oldest_kept_id(now: float) -> str:
    """The stream id below which entries are past the retention (ids are milliseconds)."""
    return f"{int((now - EVENTS_RETENTION_SECONDS) * 1000)}-0"


@runtime_checkable
class EventStream(Protocol):
    """Where events are read from: the Redis job store."""

    def last_event_id(self) -> str: ...

    def read_events(
        self, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, Any]]]: ...


def follow_events(
    source: Context | EventStream,
    since: str = "$",
    *,
    block_ms: int | None = 5000,
    count: int = 100,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each event after `since` as (stream id, event), oldest first, waiting for new ones.

    `since`: "$" for events from now on, "0" for every event the stream still holds, or the id
    of the last event handled (to resume after it). Each read waits at most `block_ms` (keep it
    below the Redis client's 10 s socket timeout); with `block_ms=None` the iterator ends once
    it has caught up with the stream instead of waiting.
    """
    stream = source if isinstance(source, EventStream) else source.store
    if not isinstance(stream, EventStream):
        raise TypeError("events are read from the Redis job store")
    # "$" is pinned to the newest id once: each later read continues from the last entry seen,
    # so nothing appended between two reads is skipped.
    after = stream.last_event_id() if since == "$" else since
    while True:
        entries = stream.read_events(after, count, block_ms)
        if not entries and block_ms is None:
            return
        for entry_id, event in entries:
            after = entry_id
            yield entry_id, event
