"""The lifecycle events' shapes and the reader that follows the stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import events
from pipeline.models import Job, JobState, Slot, SlotState

pytestmark = pytest.mark.unit

JOB = "5f0c2a3e-0d1b-4c8e-9a77-3e1f2b4c5d6e"
AT = 1_700_000_000.5
PROMPT = "a lighthouse at dawn"


def make_job(slots: list[Slot]) -> Job:
    return Job(
        id=JOB,
        tenant="acme",
        state=JobState.RUNNING,
        model="xai:grok-imagine@image-pro",
        params={"positivePrompt": PROMPT, "numberResults": len(slots)},
        slot_count=len(slots),
        output_format="PNG",
        created_at=AT,
        updated_at=AT,
        deadline_at=AT + 900,
        callback_url="https://hooks.example.com/done?sig=secret",
        metadata={"order": "42"},
        slots=slots,
    )


def slot(n: int, state: SlotState, cost: float | None = None) -> Slot:
    return Slot(job_id=JOB, slot=n, state=state, cost=cost)


def test_job_created_names_the_job_and_never_its_request() -> None:
    event = events.created_event(make_job([slot(0, SlotState.PENDING)] * 3))

    assert event == {
        "type": "job.created",
        "jobId": JOB,
        "tenant": "acme",
        "at": "2023-11-14T22:13:20.500000Z",
        "model": "xai:grok-imagine@image-pro",
        "images": 3,
    }


def test_an_image_stored_carries_its_key() -> None:
    event = events.slot_event(JOB, 2, SlotState.STORED, AT, f"jobs/{JOB}/02.png")

    assert event == {
        "type": "image.stored",
        "jobId": JOB,
        "slot": 2,
        "at": "2023-11-14T22:13:20.500000Z",
        "key": f"jobs/{JOB}/02.png",
    }


@pytest.mark.parametrize("state", [SlotState.FAILED, SlotState.DEAD, SlotState.DISCARDED])
def test_an_image_that_ended_without_being_stored_is_image_failed_with_its_state(
    state: SlotState,
) -> None:
    event = events.slot_event(JOB, 1, state, AT)

    assert event == {
        "type": "image.failed",
        "jobId": JOB,
        "slot": 1,
        "at": "2023-11-14T22:13:20.500000Z",
        "state": str(state),
    }


@pytest.mark.parametrize(
    "state", [SlotState.PENDING, SlotState.SUBMITTED, SlotState.RECEIVED], ids=str
)
def test_a_slot_still_open_is_not_announced(state: SlotState) -> None:
    assert events.slot_event(JOB, 0, state, AT) is None


def test_job_ended_counts_each_outcome_and_names_its_manifest() -> None:
    job = make_job(
        [
            slot(0, SlotState.STORED, 0.07),
            slot(1, SlotState.STORED, 0.07),
            slot(2, SlotState.FAILED),
            slot(3, SlotState.DEAD, 0.07),
            slot(4, SlotState.DISCARDED, 0.07),
        ]
    )

    event = events.ended_event(
        job, JobState.PARTIALLY_SUCCEEDED, f"jobs/{JOB}/manifest.json", 2, AT
    )

    assert json.loads(events.encode(event)) == {
        "type": "job.ended",
        "jobId": JOB,
        "tenant": "acme",
        "at": "2023-11-14T22:13:20.500000Z",
        "state": "partially_succeeded",
        "images": 5,
        "stored": 2,
        "failed": 1,
        "dead": 1,
        "discarded": 1,
        "cost": 0.28,
        "manifestKey": f"jobs/{JOB}/manifest.json",
        "manifestVersion": 2,
    }


def test_no_event_carries_the_prompt_the_metadata_or_a_url() -> None:
    job = make_job([slot(0, SlotState.STORED, 0.07)])
    texts = [
        events.encode(events.created_event(job)),
        events.encode(events.ended_event(job, JobState.SUCCEEDED, "k", 1, AT)),
    ]
    for text in texts:
        assert PROMPT not in text and "https://" not in text and "42" not in text


def test_an_event_is_compact_json_ending_in_a_brace() -> None:
    # The store's script adds the fields only the records hold before that brace.
    text = events.encode(events.created_event(make_job([])))

    assert " " not in text and text.endswith("}")


def test_the_oldest_id_kept_is_the_retention_before_now_in_milliseconds() -> None:
    oldest = events.oldest_kept_id(AT)

    assert oldest == f"{int((AT - 86400) * 1000)}-0"
    assert events.EVENTS_RETENTION_SECONDS == 86400
    assert events.EVENTS_MAX_LENGTH == 100_000


class FakeStream:
    """An events stream in memory: ids are "<n>-0", each read returns what follows `after`."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = [(f"{n + 1}-0", entry) for n, entry in enumerate(entries)]
        self.reads: list[tuple[str, int, int | None]] = []

    def last_event_id(self) -> str:
        return self.entries[-1][0] if self.entries else "0-0"

    def read_events(
        self, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, Any]]]:
        self.reads.append((after, count, block_ms))
        position = int(after.split("-")[0])
        return self.entries[position : position + count]


def test_follow_from_the_start_reads_in_pages_and_stops_when_caught_up() -> None:
    stream = FakeStream([{"n": n} for n in range(5)])

    got = list(events.follow_events(stream, "0", block_ms=None, count=2))

    assert got == [(f"{n + 1}-0", {"n": n}) for n in range(5)]
    assert [after for after, _, _ in stream.reads] == ["0", "2-0", "4-0", "5-0"]


class PublishedDuringFirstRead(FakeStream):
    """An event appended while the first read waited, after it had returned nothing."""

    def read_events(
        self, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, Any]]]:
        found = super().read_events(after, count, block_ms)
        if len(self.reads) == 1:
            self.entries.append((f"{len(self.entries) + 1}-0", {"n": "late"}))
        return found


def test_follow_from_now_skips_what_was_there_and_misses_nothing_between_reads() -> None:
    stream = PublishedDuringFirstRead([{"n": 0}, {"n": 1}])

    follower = events.follow_events(stream, block_ms=1000)

    assert next(follower) == ("3-0", {"n": "late"})
    # "$" became the newest id once; the read after the empty one went on from it.
    assert [after for after, _, _ in stream.reads] == ["2-0", "2-0"]


def test_follow_resumes_after_the_id_it_is_given() -> None:
    stream = FakeStream([{"n": n} for n in range(4)])

    assert [event["n"] for _, event in events.follow_events(stream, "2-0", block_ms=None)] == [
        2,
        3,
    ]


def test_follow_passes_its_wait_to_each_read() -> None:
    stream = FakeStream([{"n": 0}])
    follower = events.follow_events(stream, "0", block_ms=1500, count=10)

    assert next(follower) == ("1-0", {"n": 0})
    assert stream.reads == [("0", 10, 1500)]


def test_follow_refuses_a_source_without_the_stream() -> None:
    class Elsewhere:
        store = object()

    with pytest.raises(TypeError):
        next(events.follow_events(Elsewhere(), block_ms=None))  # type: ignore[arg-type]
