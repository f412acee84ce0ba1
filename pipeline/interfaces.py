"""Protocols the use cases depend on, so adapters can be swapped by settings and faked in tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.models import CircuitState, DeadLetter, Job, JobState, Slot, SlotState


@dataclass(frozen=True)
class ObjectHead:
    key: str
    size: int
    etag: str
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStorage(Protocol):
    """The few S3 operations the pipeline needs; errors become `StorageError`."""

    def presign_put(self, key: str, expires_in: int) -> str: ...

    def presign_get(self, key: str, expires_in: int) -> str:
        """A URL that lets anyone holding it GET this one object until it expires."""
        ...

    def head(self, key: str) -> ObjectHead | None: ...

    def read(self, key: str, max_bytes: int) -> bytes: ...

    def read_prefix(self, key: str, length: int) -> bytes: ...

    def read_start(self, key: str, length: int) -> tuple[ObjectHead, bytes] | None:
        """The object's head and its first `length` bytes in one request; None if it is absent."""
        ...

    def read_suffix(self, key: str, length: int) -> bytes: ...

    def copy(
        self,
        source: str,
        destination: str,
        *,
        if_match: str,
        content_type: str,
        metadata: dict[str, str],
        size: int | None = None,
    ) -> ObjectHead:
        """Copy `source` if its ETag is `if_match`. With `size` (the source's, known from that
        head) the destination's head comes from the copy's own answer, with no request after."""
        ...

    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> ObjectHead: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: list[str]) -> None:
        """Remove every key (absent ones included) in as few requests as the backend allows."""
        ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def check(self) -> None: ...


class Dispatcher(Protocol):
    """Sends nudges to workers; messages carry ids only."""

    def submit_job(self, job_id: str, countdown: float = 0) -> None: ...

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None: ...

    def notify_job(self, job_id: str) -> None: ...

    def queue_lengths(self) -> dict[str, int]: ...


class JobStore(Protocol):
    """The system of record: jobs, slots, the taskUUID index, idempotency keys, dead letters.

    Every transition is atomic and returns whether it applied (the state was allowed, and the
    slot still belongs to the expected taskUUID). Every write to an active job also makes it
    due for the reconciler within the grace period, in the same step."""

    def create_job(self, job: Job, body_hash: str) -> tuple[str, str | None]: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def get_slot(self, job_id: str, slot: int) -> Slot | None: ...

    def job_state(self, job_id: str) -> JobState | None: ...

    def slot_and_job_state(self, job_id: str, slot: int) -> tuple[Slot | None, JobState | None]: ...

    def set_job_fields(self, job_id: str, **values: Any) -> None: ...

    def transition_job(
        self, job_id: str, allowed: Iterable[JobState], to: JobState, **values: Any
    ) -> bool: ...

    def transition_slot(
        self,
        job_id: str,
        slot: int,
        allowed: Iterable[SlotState],
        to: SlotState,
        *,
        task_uuid: str | None = None,
        **values: Any,
    ) -> bool: ...

    def mint_task_uuid(
        self, job_id: str, slot: int, attempt: int, candidate: str
    ) -> str | None: ...

    def new_attempt(
        self,
        job_id: str,
        slot: int,
        allowed: Iterable[SlotState],
        attempt: int,
        *,
        task_uuid: str | None = None,
        **values: Any,
    ) -> bool: ...

    def find_task(self, task_uuid: str) -> tuple[str, int] | None: ...

    def locate_task(
        self, task_uuid: str
    ) -> tuple[str, int, Slot | None, JobState | None] | None: ...

    def retire_job(self, job_id: str, job: Job | None = None) -> None: ...

    def forget_job(self, job_id: str) -> None: ...

    def reopen_job(self, job_id: str, deadline_at: float, manifest_version: int) -> None: ...

    def active_jobs(self, page: int = 1000) -> Iterator[tuple[str, float]]: ...

    def claim_due_jobs(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` active jobs the reconciler may have something to do for by `now`, with
        their deadlines, each claimed (not due again) for the grace period."""
        ...

    def mark_due(self, times: dict[str, float]) -> None:
        """Make each job due by its time at the latest (an earlier time stays)."""
        ...

    def backfill_due(self, page: int = 1000) -> int:
        """Make each active job that has no due time due now; returns how many."""
        ...

    def active_count(self) -> int: ...

    def list_jobs(
        self,
        tenant: str,
        *,
        state: JobState | None = None,
        cursor: float | None = None,
        limit: int = 50,
        since: float | None = None,
    ) -> tuple[list[Job], float | None]: ...

    def dead_letter(self, job_id: str, slot: int, code: str, message: str) -> None: ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    def remove_dead_letter(self, job_id: str, slot: int) -> None: ...

    def publish_event(self, event: dict[str, Any]) -> None: ...

    def count_mismatch(self, kind: str) -> None: ...

    def mismatches(self) -> dict[str, int]: ...

    def exclusive(self, name: str, ttl: float) -> AbstractContextManager[bool]: ...

    def ping(self) -> bool: ...


class Circuit(Protocol):
    """Pauses submission while the provider refuses the account (every job), or one model
    (`model`: only that model's jobs)."""

    def state(self, model: str | None = None) -> CircuitState: ...

    def open(self, code: str, message: str, probe_at: float, model: str | None = None) -> bool: ...

    def open_models(self) -> list[CircuitState]: ...

    def schedule_probe(self, at: float, model: str | None = None) -> None: ...

    def reset(self, model: str | None = None) -> None: ...


class InFlightBudget(Protocol):
    """Images in flight at the provider under one API key, across every worker and host."""

    def acquire(self, members: list[str], limit: int, ttl: float) -> list[str]: ...

    def release(self, members: list[str]) -> int: ...

    def release_and_wake(self, members: list[str], limit: int) -> list[str]: ...

    def wait(self, job_id: str) -> None: ...

    def pop_waiters(self, count: int) -> list[str]: ...

    def in_use(self) -> int: ...
