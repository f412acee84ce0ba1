"""The lifecycle events on a real Redis: published by the steps that make each change, in the
same round trip, bounded by count and age, read by `follow_events` and by consumer groups."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from pipeline import events
from pipeline.events import follow_events
from pipeline.models import Job
from pipeline.store import RedisJobStore
from tests.integration.conftest import USE_CASE_PREFIX, UseCases, error_item, image_item, jpeg_bytes

pytestmark = pytest.mark.integration

MODEL = "xai:grok-imagine@image-pro"
PROMPT = "a lighthouse at dawn"
API_KEY = "runware-key-under-test"


def make_job(slots: int = 2, idempotency_key: str | None = None) -> Job:
    now = time.time()
    return Job(
        id=str(uuid.uuid4()),
        tenant="acme",
        state="queued",
        model=MODEL,
        params={"model": MODEL, "positivePrompt": PROMPT, "numberResults": slots},
        slot_count=slots,
        output_format="PNG",
        created_at=now,
        updated_at=now,
        deadline_at=now + 900,
        idempotency_key=idempotency_key,
        metadata={"order": "42"},
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisJobStore:
    return RedisJobStore(redis_client, retention_seconds=3600, api_key=API_KEY)


def published(store: RedisJobStore, job_id: str | None = None) -> list[dict[str, Any]]:
    """Every event on the stream (of one job), oldest first."""
    found = [event for _, event in follow_events(store, "0", block_ms=None)]
    return [event for event in found if job_id is None or event["jobId"] == job_id]


def without_times(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in found:
        assert event.pop("at").endswith("Z")
    return found


# ------------------------------------------------------------------ the store publishes


def test_a_new_job_is_published_once_and_an_idempotent_enqueue_publishes_nothing(
    store: RedisJobStore,
) -> None:
    job = make_job(idempotency_key="order-42")

    store.create_job(job, "hash")
    store.create_job(make_job(idempotency_key="order-42"), "hash")

    assert without_times(published(store)) == [
        {"type": "job.created", "jobId": job.id, "tenant": "acme", "model": MODEL, "images": 2}
    ]


def test_an_image_stored_is_published_with_its_tenant_task_and_key_once(
    store: RedisJobStore,
) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=task)
    store.transition_slot(job.id, 0, ["submitted"], "received", task_uuid=task, cost=0.07)
    key = f"jobs/{job.id}/00.png"

    assert store.transition_slot(job.id, 0, ["received"], "stored", task_uuid=task, final_key=key)
    assert not store.transition_slot(
        job.id, 0, ["received"], "stored", task_uuid=task, final_key=key
    )

    assert without_times(published(store, job.id))[1:] == [
        {
            "type": "image.stored",
            "jobId": job.id,
            "slot": 0,
            "key": key,
            "tenant": "acme",
            "taskUUID": task,
        }
    ]


def test_an_image_that_ends_without_being_stored_is_published_with_its_code(
    store: RedisJobStore,
) -> None:
    job = make_job(slots=3)
    store.create_job(job, "h")
    tasks = [store.mint_task_uuid(job.id, n, 1, str(uuid.uuid4())) for n in range(3)]

    store.transition_slot(
        job.id, 0, ["pending"], "failed", task_uuid=tasks[0], error_code="rejected"
    )
    store.transition_slot(job.id, 1, ["pending"], "dead", error_code="timeoutProvider")
    # A slot failed at the deadline whose result comes in later: discarded, the code stays.
    store.transition_slot(job.id, 2, ["pending"], "failed", error_code="deadline")
    store.transition_slot(job.id, 2, ["failed"], "discarded", task_uuid=tasks[2], cost=0.07)

    found = without_times(published(store, job.id))[1:]
    assert found == [
        {"type": "image.failed", "jobId": job.id, "slot": 0, "state": "failed",
         "tenant": "acme", "taskUUID": tasks[0], "code": "rejected"},
        {"type": "image.failed", "jobId": job.id, "slot": 1, "state": "dead",
         "tenant": "acme", "taskUUID": tasks[1], "code": "timeoutProvider"},
        {"type": "image.failed", "jobId": job.id, "slot": 2, "state": "failed",
         "tenant": "acme", "taskUUID": tasks[2], "code": "deadline"},
        {"type": "image.failed", "jobId": job.id, "slot": 2, "state": "discarded",
         "tenant": "acme", "taskUUID": tasks[2], "code": "deadline"},
    ]  # fmt: skip


def test_a_slot_that_moves_between_open_states_publishes_nothing(store: RedisJobStore) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))

    store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=task)
    store.transition_slot(job.id, 0, ["submitted"], "received", task_uuid=task)
    store.transition_slot(job.id, 0, ["received"], "received", task_uuid=task, image_url="x")

    assert [event["type"] for event in published(store, job.id)] == ["job.created"]


def test_a_job_transition_publishes_its_event_only_when_it_applies(store: RedisJobStore) -> None:
    job = make_job()
    store.create_job(job, "h")
    ended = {"type": "job.ended", "jobId": job.id, "tenant": "acme", "state": "succeeded"}

    assert store.transition_job(job.id, ["queued"], "succeeded", event=ended)
    assert not store.transition_job(job.id, ["queued", "running"], "failed", event=ended)

    assert [event["type"] for event in published(store, job.id)] == ["job.created", "job.ended"]
    assert published(store, job.id)[1] == ended  # a job's event is published as given


def test_no_step_takes_an_extra_round_trip_to_publish(
    store: RedisJobStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips: list[str] = []
    sent = redis_client.execute_command
    executed = Pipeline.execute

    def command(*args: Any, **options: Any) -> Any:
        trips.append(str(args[0]))
        return sent(*args, **options)

    def pipeline(self: Pipeline, *args: Any, **options: Any) -> Any:
        trips.append("pipeline")
        return executed(self, *args, **options)

    warm = make_job(slots=1)  # loads each script once: later calls are one EVALSHA each
    store.create_job(warm, "h")
    store.transition_slot(warm.id, 0, ["pending"], "stored", final_key="k")
    job = make_job(slots=1)
    monkeypatch.setattr(redis_client, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)

    store.create_job(job, "h")
    store.transition_slot(job.id, 0, ["pending"], "stored", final_key="k")
    ended = {"type": "job.ended", "jobId": job.id}
    store.transition_job(job.id, ["queued"], "succeeded", event=ended)
    store.set_job_fields(job.id, manifest_version=2, event=ended)

    assert trips == ["EVALSHA", "EVALSHA", "EVALSHA", "EXISTS", "pipeline"]
    assert [event["type"] for event in published(store, job.id)] == [
        "job.created",
        "image.stored",
        "job.ended",
        "job.ended",
    ]


# ------------------------------------------------------------------ bounds


def test_the_stream_keeps_about_its_maximum_length(
    store: RedisJobStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "EVENTS_MAX_LENGTH", 10)

    for _ in range(150):
        store.create_job(make_job(slots=0), "h")
    for _ in range(150):
        store.publish_event({"type": "job.ended", "jobId": "j"})

    # MAXLEN ~ drops whole stream nodes (100 entries by default) once they are past the bound.
    assert 10 <= redis_client.xlen(store.events_key) <= 110


def test_events_older_than_the_retention_are_dropped(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    old = int((time.time() - events.EVENTS_RETENTION_SECONDS - 3600) * 1000)
    for n in range(250):
        redis_client.xadd(store.events_key, {"event": '{"jobId": "old"}'}, id=f"{old}-{n}")

    job = make_job(slots=1)
    store.create_job(job, "h")

    kept = redis_client.xrange(store.events_key)
    # MINID ~ drops the whole nodes older than the retention: the last one also holds the new.
    assert len([entry for entry, _ in kept if entry.startswith(f"{old}-")]) < 100
    assert published(store, job.id)[0]["type"] == "job.created"


# ------------------------------------------------------------------ readers


def blocked_readers(client: redis.Redis) -> int:
    return sum(1 for entry in client.client_list() if entry.get("cmd") == "xread")


def test_following_from_now_waits_for_new_events_only(
    store: RedisJobStore, redis_client: redis.Redis, redis_server: str
) -> None:
    earlier = make_job(slots=0)
    store.create_job(earlier, "h")
    reader = RedisJobStore(redis.Redis.from_url(redis_server, decode_responses=True))
    received: list[tuple[str, dict[str, Any]]] = []
    follower: Iterator[tuple[str, dict[str, Any]]] = follow_events(reader, block_ms=5000)
    thread = threading.Thread(target=lambda: received.append(next(follower)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while blocked_readers(redis_client) == 0:
        assert time.monotonic() < deadline, "the follower never waited on the stream"
        time.sleep(0.01)

    later = make_job(slots=0)
    store.create_job(later, "h")
    thread.join(timeout=10)

    [(entry_id, event)] = received
    assert event["jobId"] == later.id
    assert [found for found, _ in follow_events(store, entry_id, block_ms=None)] == []
    reader.redis.close()


def test_a_consumer_group_gets_each_event_and_again_until_acknowledged(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    """What docs/events.md shows, with the commands any Redis client has."""
    stream = store.events_key
    redis_client.xgroup_create(stream, "thumbnails", id="$", mkstream=True)
    jobs = [make_job(slots=0) for _ in range(3)]
    for job in jobs:
        store.create_job(job, "h")

    [[_, delivered]] = redis_client.xreadgroup("thumbnails", "worker-1", {stream: ">"}, count=10)
    assert len(delivered) == 3
    redis_client.xack(stream, "thumbnails", delivered[0][0])

    # worker-1 died before acknowledging the other two: they are still its pending entries.
    [[_, pending]] = redis_client.xreadgroup("thumbnails", "worker-1", {stream: "0"})
    assert [entry for entry, _ in pending] == [entry for entry, _ in delivered[1:]]
    claimed = redis_client.xautoclaim(stream, "thumbnails", "worker-2", 0, "0-0")[1]
    assert [entry for entry, _ in claimed] == [entry for entry, _ in delivered[1:]]
    redis_client.xack(stream, "thumbnails", *[entry for entry, _ in claimed])
    assert redis_client.xpending(stream, "thumbnails")["pending"] == 0


# ------------------------------------------------------------------ through the use cases


def job_events(uc: UseCases, job_id: str) -> list[dict[str, Any]]:
    return published(uc.store, job_id)


def raw_stream(uc: UseCases) -> str:
    return " ".join(fields["event"] for _, fields in uc.store.redis.xrange(uc.store.events_key))


def test_a_job_publishes_created_each_image_then_ended_after_its_manifest(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, (stored, failed) = uc.submitted(numberResults=2, metadata={"team": "maps"})
    uc.upload(stored, jpeg_bytes())
    uc.webhook(stored, {"data": [image_item(stored, cost=0.07)]})
    assert uc.service.promote_slot(job_id, 0) == "stored"
    uc.webhook(failed, {"errors": [error_item(failed, "providerContentPolicyViolation")]})

    found = job_events(uc, job_id)

    manifest_key = f"{USE_CASE_PREFIX}jobs/{job_id}/manifest.json"
    assert [(event["type"], event.get("slot")) for event in found] == [
        ("job.created", None),
        ("image.stored", 0),
        ("image.failed", 1),
        ("job.ended", None),
    ]
    assert found[1]["key"] == f"{USE_CASE_PREFIX}jobs/{job_id}/00.jpg"
    assert found[1]["taskUUID"] == stored and found[1]["tenant"] == "acme"
    assert (found[2]["code"], found[2]["state"], found[2]["taskUUID"]) == (
        "providerContentPolicyViolation",
        "failed",
        failed,
    )
    ended = found[3]
    assert {name: ended[name] for name in ("state", "images", "stored", "failed", "cost")} == {
        "state": "partially_succeeded",
        "images": 2,
        "stored": 1,
        "failed": 1,
        "cost": 0.07,
    }
    assert (ended["manifestKey"], ended["manifestVersion"]) == (manifest_key, 1)
    assert uc.manifest(job_id)["manifestVersion"] == 1
    text = raw_stream(uc)
    for secret in (PROMPT, "maps", "token=", "X-Amz", "uploadEndpoint", "https://"):
        assert secret not in text


def test_a_cancelled_job_and_its_late_result_publish_a_second_end(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, [task_uuid] = uc.submitted()
    uc.service.cancel_job(job_id, "acme")

    assert uc.webhook(task_uuid, {"data": [image_item(task_uuid, cost=0.07)]}) == ["discarded"]

    found = job_events(uc, job_id)
    assert [(e["type"], e.get("state"), e.get("code")) for e in found] == [
        ("job.created", None, None),
        ("image.failed", "failed", "cancelled"),
        ("job.ended", "cancelled", None),
        ("image.failed", "discarded", "cancelled"),
        ("job.ended", "cancelled", None),
    ]
    assert [(e["manifestVersion"], e["cost"], e["discarded"]) for e in found[2::2]] == [
        (1, 0.0, 0),
        (2, 0.07, 1),
    ]


def test_a_dead_image_is_published_once_and_its_retries_not_at_all(use_cases: UseCases) -> None:
    uc = use_cases
    job_id = uc.create()
    for _ in range(uc.settings.slot_max_attempts):
        uc.service.submit_job(job_id)
        [task_uuid] = uc.task_uuids(job_id)
        uc.webhook(task_uuid, {"errors": [error_item(task_uuid, "timeoutProvider")]})

    found = job_events(uc, job_id)

    assert [(e["type"], e.get("state"), e.get("code")) for e in found] == [
        ("job.created", None, None),
        ("image.failed", "dead", "timeoutProvider"),
        ("job.ended", "failed", None),
    ]
    assert found[1]["taskUUID"] == task_uuid
    assert (found[2]["dead"], found[2]["failed"]) == (1, 0)


def test_a_job_an_operator_reopens_publishes_its_new_end_with_the_next_version(
    use_cases: UseCases,
) -> None:
    uc = use_cases
    job_id, [first] = uc.submitted()
    uc.webhook(first, {"errors": [error_item(first, "providerContentPolicyViolation")]})
    uc.service.retry_job(job_id)
    uc.service.submit_job(job_id)
    [second] = uc.task_uuids(job_id)
    uc.upload(second, jpeg_bytes())
    uc.webhook(second, {"data": [image_item(second)]})
    assert uc.service.promote_slot(job_id, 0) == "stored"

    ends = [event for event in job_events(uc, job_id) if event["type"] == "job.ended"]

    assert [(e["state"], e["manifestVersion"]) for e in ends] == [("failed", 1), ("succeeded", 2)]
    assert uc.manifest(job_id)["manifestVersion"] == 2


def test_a_deadline_publishes_each_unfinished_image_then_the_end(use_cases: UseCases) -> None:
    uc = use_cases
    job_id, _ = uc.submitted(numberResults=2, deadlineSeconds=60)

    uc.clock.advance(61)
    uc.service.expire_job(job_id)

    found = job_events(uc, job_id)
    assert [(e["type"], e.get("slot"), e.get("code")) for e in found] == [
        ("job.created", None, None),
        ("image.failed", 0, "deadline"),
        ("image.failed", 1, "deadline"),
        ("job.ended", None, None),
    ]
    assert found[-1]["state"] == "timed_out"
