"""The job view as typed values: `Job` and its image `Slot`s, each keeping the JSON it came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from imagine_client.errors import InvalidResponse

JOB_STATES = (
    "queued", "running", "succeeded", "partially_succeeded", "failed", "cancelled", "timed_out",
)  # fmt: skip
JOB_OPEN = frozenset({"queued", "running"})
JOB_TERMINAL = frozenset(JOB_STATES) - JOB_OPEN
SLOT_STATES = ("pending", "submitted", "received", "stored", "failed", "discarded", "dead")
SLOT_OPEN = frozenset({"pending", "submitted", "received"})
# A presigned URL this close to expiring is not started on: the download could outlast it.
URL_MARGIN = timedelta(seconds=30)


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _time(data: Mapping[str, Any], key: str) -> datetime | None:
    value = _str(data, key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class SlotError:
    """Why an image failed: the provider's code and message, or the pipeline's."""

    code: str
    message: str


@dataclass(frozen=True)
class SlotAttempt:
    """An earlier attempt of an image: its task, how it ended and why, and when."""

    attempt: int
    task_uuid: str
    state: str | None = None
    model: str | None = None
    code: str | None = None
    message: str | None = None
    submitted_at: datetime | None = None
    received_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlotAttempt:
        return cls(
            attempt=_int(data, "attempt") or 0,
            task_uuid=_str(data, "taskUUID") or "",
            state=_str(data, "state"),
            model=_str(data, "model"),
            code=_str(data, "code"),
            message=_str(data, "message"),
            submitted_at=_time(data, "submittedAt"),
            received_at=_time(data, "receivedAt"),
            ended_at=_time(data, "endedAt"),
        )


@dataclass(frozen=True)
class Slot:
    """One requested image of a job. `raw` is the slot's JSON, fields this client does not
    know included."""

    slot: int
    state: str
    final_key: str | None = None
    url: str | None = None
    url_expires_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    seed: int | None = None
    cost: float | None = None
    model: str | None = None
    task_uuid: str | None = None
    image_uuid: str | None = None
    error: SlotError | None = None
    attempt: int | None = None
    previous_task_uuids: tuple[str, ...] = ()
    submitted_at: datetime | None = None
    received_at: datetime | None = None
    stored_at: datetime | None = None
    updated_at: datetime | None = None
    history: tuple[SlotAttempt, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def stored(self) -> bool:
        """Whether the image is in S3 under its final key."""
        return self.state == "stored"

    @property
    def ended(self) -> bool:
        return self.state not in SLOT_OPEN

    @property
    def extension(self) -> str:
        """The file extension of the stored image (its real format)."""
        if self.final_key and "." in self.final_key.rsplit("/", 1)[-1]:
            return self.final_key.rsplit(".", 1)[-1].lower()
        return (self.format or "bin").lower().replace("jpeg", "jpg")

    def url_usable(self, now: datetime | None = None) -> bool:
        """Whether `url` is there and far enough from expiring to download from."""
        if not self.url:
            return False
        if self.url_expires_at is None:
            return True
        return (now or datetime.now(UTC)) + URL_MARGIN < self.url_expires_at

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Slot:
        number = _int(data, "slot")
        state = _str(data, "state")
        if number is None or state is None:
            raise InvalidResponse(f"a job's slot lacks its number or state: {dict(data)!r:.200}")
        error = data.get("error")
        previous = data.get("previousTaskUUIDs")
        history = data.get("history")
        return cls(
            slot=number,
            state=state,
            final_key=_str(data, "finalKey"),
            url=_str(data, "url"),
            url_expires_at=_time(data, "urlExpiresAt"),
            width=_int(data, "width"),
            height=_int(data, "height"),
            format=_str(data, "format"),
            size=_int(data, "bytes"),
            seed=_int(data, "seed"),
            cost=_float(data, "cost"),
            model=_str(data, "model"),
            task_uuid=_str(data, "taskUUID"),
            image_uuid=_str(data, "imageUUID"),
            error=(
                SlotError(str(error.get("code")), str(error.get("message")))
                if isinstance(error, Mapping)
                else None
            ),
            attempt=_int(data, "attempt"),
            previous_task_uuids=tuple(
                item
                for item in (previous if isinstance(previous, list) else [])
                if isinstance(item, str)
            ),
            submitted_at=_time(data, "submittedAt"),
            received_at=_time(data, "receivedAt"),
            stored_at=_time(data, "storedAt"),
            updated_at=_time(data, "updatedAt"),
            history=tuple(
                SlotAttempt.from_dict(item)
                for item in (history if isinstance(history, list) else [])
                if isinstance(item, Mapping)
            ),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Job:
    """A job as `GET /v1/jobs/{id}` shows it. `raw` is the whole JSON; `replayed` says that
    `submit` found the job an earlier call with the same idempotency key had made."""

    id: str
    state: str
    tenant: str | None = None
    model: str | None = None
    number_results: int | None = None
    output_format: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deadline_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    cost: float | None = None
    manifest_key: str | None = None
    idempotency_key: str | None = None
    client_task_uuid: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    slots: tuple[Slot, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    replayed: bool = field(default=False, compare=False)

    @property
    def ended(self) -> bool:
        """Whether the job is in a terminal state (it changes no more)."""
        return self.state in JOB_TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def stored(self) -> int:
        """How many of its images are stored."""
        return sum(1 for slot in self.slots if slot.stored)

    def slot(self, number: int) -> Slot | None:
        return next((slot for slot in self.slots if slot.slot == number), None)

    @classmethod
    def from_dict(cls, data: Any, *, replayed: bool = False) -> Job:
        if not isinstance(data, Mapping):
            raise InvalidResponse(f"a job is a JSON object, got {type(data).__name__}")
        job_id = _str(data, "id")
        state = _str(data, "state")
        if job_id is None or state is None:
            raise InvalidResponse(f"a job lacks its id or state: {dict(data)!r:.200}")
        listed = data.get("slots")
        slots: Sequence[Any] = listed if isinstance(listed, list) else []
        return cls(
            id=job_id,
            state=state,
            tenant=_str(data, "tenant"),
            model=_str(data, "model"),
            number_results=_int(data, "numberResults"),
            output_format=_str(data, "outputFormat"),
            created_at=_time(data, "createdAt"),
            updated_at=_time(data, "updatedAt"),
            deadline_at=_time(data, "deadlineAt"),
            ended_at=_time(data, "endedAt"),
            reason=_str(data, "reason"),
            cost=_float(data, "cost"),
            manifest_key=_str(data, "manifestKey"),
            idempotency_key=_str(data, "idempotencyKey"),
            client_task_uuid=_str(data, "clientTaskUUID"),
            callback_url=_str(data, "callbackURL"),
            metadata=_mapping(data.get("metadata")),
            slots=tuple(Slot.from_dict(_mapping(slot)) for slot in slots),
            raw=dict(data),
            replayed=replayed,
        )


@dataclass(frozen=True)
class Page:
    """One page of `GET /v1/jobs`: its jobs, newest first, and the cursor of the next page."""

    jobs: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class DayStats:
    """One tenant's counters of one UTC day, as `GET /v1/stats` shows them. `ended` counts jobs
    by the state they ended in that day; `reserved_*` are what the daily caps hold (None when
    no cap counted the day)."""

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
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Any) -> DayStats:
        if not isinstance(data, Mapping):
            raise InvalidResponse(f"a day of stats is a JSON object, got {type(data).__name__}")
        day, tenant = _str(data, "day"), _str(data, "tenant")
        if day is None or tenant is None:
            raise InvalidResponse(f"a day of stats lacks its day or tenant: {dict(data)!r:.200}")
        ended = _mapping(data.get("ended"))
        reserved = data.get("reserved")
        return cls(
            day=day,
            tenant=tenant,
            created=_int(data, "created") or 0,
            images_requested=_int(data, "imagesRequested") or 0,
            ended={str(state): count for state, count in ended.items() if isinstance(count, int)},
            images_stored=_int(data, "imagesStored") or 0,
            images_failed=_int(data, "imagesFailed") or 0,
            spend_usd=_float(data, "spendUsd") or 0.0,
            reserved_images=_int(reserved, "images") if isinstance(reserved, Mapping) else None,
            reserved_spend_usd=(
                _float(reserved, "spendUsd") if isinstance(reserved, Mapping) else None
            ),
            raw=dict(data),
        )
