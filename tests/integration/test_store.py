"""RedisJobStore against a real Redis: records, idempotency, atomic transitions, leases."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from pipeline.models import Job
from pipeline.store import RedisInFlightBudget, RedisJobStore

pytestmark = pytest.mark.integration

MODEL = "xai:grok-imagine@image-pro"
RETENTION = 3600
API_KEY = "runware-key-under-test"


def make_job(
    tenant: str = "acme",
    slots: int = 2,
    *,
    idempotency_key: str | None = None,
    created_at: float | None = None,
    deadline: float = 900.0,
) -> Job:
    now = time.time() if created_at is None else created_at
    return Job(
        id=str(uuid.uuid4()),
        tenant=tenant,
        state="queued",
        model=MODEL,
        params={"model": MODEL, "positivePrompt": "a red fox", "numberResults": slots},
        slot_count=slots,
        output_format="PNG",
        created_at=now,
        updated_at=now,
        deadline_at=now + deadline,
        idempotency_key=idempotency_key,
        metadata={"order": "42"},
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisJobStore:
    return RedisJobStore(redis_client, retention_seconds=RETENTION)


@pytest.fixture
def second_client(redis_server: str, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """Another connection to the same Redis, as a second worker would hold."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


def test_create_job_writes_the_job_its_pending_slots_and_indexes(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    job = make_job(slots=3)

    job_id, stored_hash = store.create_job(job, "hash-1")

    assert (job_id, stored_hash) == (job.id, None)
    raw = redis_client.hgetall(store.job_key(job.id))
    assert raw["state"] == "queued"
    assert raw["tenant"] == "acme"
    assert raw["slot_count"] == "3"
    for n in range(3):
        slot = redis_client.hgetall(store.slot_key(job.id, n))
        assert slot == {
            "state": "pending",
            "slot": str(n),
            "attempt": "1",
            "job_id": job.id,
            "updated_at": repr(job.created_at),
        }
    assert not redis_client.exists(store.slot_key(job.id, 3))
    assert redis_client.zscore(store.tenant_key("acme"), job.id) == job.created_at
    assert redis_client.zscore(store.active_key, job.id) == job.deadline_at
    assert list(store.active_jobs()) == [(job.id, job.deadline_at)]

    loaded = store.get_job(job.id)
    assert loaded is not None
    assert loaded.state == "queued"
    assert loaded.params == job.params
    assert loaded.metadata == {"order": "42"}
    assert [(s.slot, s.state, s.attempt, s.task_uuid) for s in loaded.slots] == [
        (0, "pending", 1, None),
        (1, "pending", 1, None),
        (2, "pending", 1, None),
    ]


def test_the_same_idempotency_key_returns_the_first_job_and_its_body_hash(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    first = make_job(idempotency_key="order-42")
    again = make_job(idempotency_key="order-42")

    assert store.create_job(first, "hash-first") == (first.id, None)
    assert store.create_job(again, "hash-other") == (first.id, "hash-first")

    assert not redis_client.exists(store.job_key(again.id))
    assert not redis_client.exists(store.slot_key(again.id, 0))
    assert redis_client.zrange(store.tenant_key("acme"), 0, -1) == [first.id]
    assert [job_id for job_id, _ in list(store.active_jobs())] == [first.id]
    assert 0 < redis_client.ttl(store.idempotency_key("acme", "order-42")) <= RETENTION


def test_another_tenants_idempotency_key_makes_a_new_job(store: RedisJobStore) -> None:
    ours = make_job("acme", idempotency_key="order-42")
    theirs = make_job("globex", idempotency_key="order-42")

    assert store.create_job(ours, "hash-a") == (ours.id, None)
    assert store.create_job(theirs, "hash-b") == (theirs.id, None)

    loaded = store.get_job(theirs.id)
    assert loaded is not None and loaded.tenant == "globex"
    assert store.create_job(make_job("globex", idempotency_key="order-42"), "hash-c") == (
        theirs.id,
        "hash-b",
    )


def test_an_idempotency_key_whose_job_expired_makes_a_new_job(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    first = make_job(idempotency_key="order-42")
    store.create_job(first, "hash-first")
    redis_client.delete(store.job_key(first.id))

    fresh = make_job(idempotency_key="order-42")
    assert store.create_job(fresh, "hash-fresh") == (fresh.id, None)
    assert store.create_job(make_job(idempotency_key="order-42"), "x") == (fresh.id, "hash-fresh")


def test_slot_transitions_are_monotonic(store: RedisJobStore) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    assert task_uuid is not None

    assert store.transition_slot(
        job.id, 0, ["pending"], "submitted", task_uuid=task_uuid, submitted_at=repr(time.time())
    )
    assert store.transition_slot(
        job.id, 0, ["submitted"], "received", task_uuid=task_uuid, image_uuid="img-1", cost=0.07
    )
    assert store.transition_slot(
        job.id,
        0,
        ["received"],
        "stored",
        task_uuid=task_uuid,
        final_key=f"jobs/{job.id}/00.png",
        size=1234,
    )

    # A late or repeated message finds the slot stored and changes nothing.
    assert not store.transition_slot(
        job.id, 0, ["submitted"], "received", task_uuid=task_uuid, image_uuid="img-late"
    )
    assert not store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=task_uuid)
    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert (slot.state, slot.image_uuid, slot.cost, slot.size) == ("stored", "img-1", 0.07, 1234)
    assert slot.final_key == f"jobs/{job.id}/00.png"
    assert slot.terminal


def test_a_transition_guarded_by_another_task_uuid_is_refused(store: RedisJobStore) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    assert task_uuid is not None

    assert not store.transition_slot(
        job.id, 0, ["pending"], "submitted", task_uuid=str(uuid.uuid4())
    )
    slot = store.get_slot(job.id, 0)
    assert slot is not None and slot.state == "pending"

    assert store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=task_uuid)


def test_a_transition_clears_fields_given_as_none(store: RedisJobStore) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    assert store.transition_slot(
        job.id, 0, ["pending"], "failed", error_code="timeoutProvider", error_message="slow"
    )
    assert store.transition_slot(
        job.id, 0, ["failed"], "pending", attempt=2, error_code=None, error_message=None
    )
    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert (slot.state, slot.attempt, slot.error_code, slot.error_message) == (
        "pending",
        2,
        None,
        None,
    )


def test_job_transitions_are_monotonic_and_missing_records_refuse(store: RedisJobStore) -> None:
    job = make_job()
    store.create_job(job, "h")

    assert store.transition_job(job.id, ["queued"], "running")
    assert store.transition_job(job.id, ["running"], "succeeded", ended_at=repr(time.time()))
    assert not store.transition_job(job.id, ["queued", "running"], "failed", reason="late")
    assert store.job_state(job.id) == "succeeded"
    loaded = store.get_job(job.id)
    assert loaded is not None and loaded.reason is None and loaded.ended_at is not None

    assert not store.transition_job("no-such-job", ["queued"], "running")
    assert not store.transition_slot("no-such-job", 0, ["pending"], "submitted")
    assert store.job_state("no-such-job") is None


def test_concurrent_transitions_on_one_slot_apply_exactly_once(
    store: RedisJobStore, redis_server: str
) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    start = threading.Barrier(8)
    clients = [redis.Redis.from_url(redis_server, decode_responses=True) for _ in range(8)]

    def attempt(n: int) -> bool:
        worker = RedisJobStore(clients[n], retention_seconds=RETENTION)
        start.wait(timeout=10)
        return worker.transition_slot(
            job.id, 0, ["pending"], "submitted", task_uuid=task_uuid, image_uuid=f"worker-{n}"
        )

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(attempt, range(8)))
    finally:
        for client in clients:
            client.close()

    assert outcomes.count(True) == 1
    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert slot.state == "submitted"
    assert slot.image_uuid == f"worker-{outcomes.index(True)}"


def test_mint_task_uuid_is_idempotent_per_attempt(store: RedisJobStore) -> None:
    job = make_job(slots=2)
    store.create_job(job, "h")
    first, other = str(uuid.uuid4()), str(uuid.uuid4())

    assert store.mint_task_uuid(job.id, 0, 1, first) == first
    assert store.mint_task_uuid(job.id, 0, 1, other) == first

    assert store.find_task(first) == (job.id, 0)
    assert store.find_task(other) is None
    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert (slot.task_uuid, slot.task_attempt, slot.previous_task_uuids) == (first, 1, [])


def test_a_new_attempt_mints_a_new_task_uuid_and_keeps_the_old_one_indexed(
    store: RedisJobStore,
) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert store.mint_task_uuid(job.id, 0, 1, first) == first
    assert store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=first)

    # A slot in flight cannot get a new attempt's uuid.
    assert store.mint_task_uuid(job.id, 0, 2, second) is None
    assert store.find_task(second) is None

    # The provider failed the image: the slot reopens as attempt 2.
    assert store.transition_slot(job.id, 0, ["submitted"], "pending", task_uuid=first, attempt=2)
    assert store.mint_task_uuid(job.id, 0, 2, second) == second
    assert store.mint_task_uuid(job.id, 0, 2, str(uuid.uuid4())) == second

    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert (slot.task_uuid, slot.task_attempt, slot.previous_task_uuids) == (second, 2, [first])
    assert store.find_task(first) == (job.id, 0)
    assert store.find_task(second) == (job.id, 0)
    # A result for the old attempt cannot move the new one.
    assert not store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=first)


def test_find_task_of_an_unknown_uuid_is_none(store: RedisJobStore) -> None:
    assert store.find_task(str(uuid.uuid4())) is None


def test_retire_job_sets_retention_ttls_and_leaves_the_active_set(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    job = make_job(slots=2)
    keep = make_job(slots=1)
    store.create_job(job, "h")
    store.create_job(keep, "h")
    uuids = []
    for n in range(2):
        minted = store.mint_task_uuid(job.id, n, 1, str(uuid.uuid4()))
        assert minted is not None
        uuids.append(minted)
    assert store.transition_slot(job.id, 0, ["pending"], "pending", attempt=2)
    assert store.mint_task_uuid(job.id, 0, 2, str(uuid.uuid4())) is not None
    slot0 = store.get_slot(job.id, 0)
    assert slot0 is not None and slot0.task_uuid is not None
    uuids.append(slot0.task_uuid)
    assert store.transition_job(job.id, ["queued"], "succeeded")
    assert redis_client.ttl(store.job_key(job.id)) == -1

    store.retire_job(job.id)

    keys = [store.job_key(job.id), store.slot_key(job.id, 0), store.slot_key(job.id, 1)]
    keys += [store.task_key(u) for u in uuids]
    for key in keys:
        assert 0 < redis_client.ttl(key) <= RETENTION, key
    assert [job_id for job_id, _ in list(store.active_jobs())] == [keep.id]
    assert redis_client.ttl(store.job_key(keep.id)) == -1
    store.retire_job("no-such-job")  # nothing to do, no error


def test_list_jobs_pages_newest_first_with_a_cursor(store: RedisJobStore) -> None:
    base = time.time() - 100
    jobs = [make_job("acme", 1, created_at=base + n) for n in range(5)]
    for job in jobs:
        store.create_job(job, "h")
    store.create_job(make_job("globex", 1, created_at=base + 10), "h")

    page1, cursor1 = store.list_jobs("acme", limit=2)
    page2, cursor2 = store.list_jobs("acme", limit=2, cursor=cursor1)
    page3, cursor3 = store.list_jobs("acme", limit=2, cursor=cursor2)

    assert [j.id for j in page1] == [jobs[4].id, jobs[3].id]
    assert [j.id for j in page2] == [jobs[2].id, jobs[1].id]
    assert [j.id for j in page3] == [jobs[0].id]
    assert cursor1 is not None and cursor2 is not None
    assert cursor3 is None

    whole, end = store.list_jobs("acme", limit=5)
    assert [j.id for j in whole] == [j.id for j in reversed(jobs)] and end is None
    assert store.list_jobs("nobody") == ([], None)


def test_list_jobs_filters_by_state_across_pages(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    base = time.time() - 100
    jobs = [make_job("acme", 1, created_at=base + n) for n in range(7)]
    for job in jobs:
        store.create_job(job, "h")
    done = [jobs[0], jobs[3], jobs[5]]
    for job in done:
        assert store.transition_job(job.id, ["queued"], "succeeded")

    first, cursor = store.list_jobs("acme", state="succeeded", limit=2)
    rest, end = store.list_jobs("acme", state="succeeded", limit=2, cursor=cursor)

    assert [j.id for j in first] == [jobs[5].id, jobs[3].id]
    assert [j.id for j in rest] == [jobs[0].id]
    assert end is None
    assert all(j.state == "succeeded" for j in first + rest)
    queued, _ = store.list_jobs("acme", state="queued", limit=10)
    assert [j.id for j in queued] == [jobs[6].id, jobs[4].id, jobs[2].id, jobs[1].id]

    # An expired job drops out of the listing and out of the tenant index.
    redis_client.delete(store.job_key(jobs[4].id))
    queued, _ = store.list_jobs("acme", state="queued", limit=10)
    assert [j.id for j in queued] == [jobs[6].id, jobs[2].id, jobs[1].id]
    assert redis_client.zscore(store.tenant_key("acme"), jobs[4].id) is None


def test_a_lease_budget_is_shared_by_every_worker(
    redis_client: redis.Redis, second_client: redis.Redis
) -> None:
    mine = RedisInFlightBudget(redis_client, API_KEY)
    other = RedisInFlightBudget(second_client, API_KEY)

    assert mine.acquire(["a", "b"], 3, 30) == ["a", "b"]
    assert other.acquire(["c", "d"], 3, 30) == ["c"]
    assert other.acquire(["e"], 3, 30) == []
    assert mine.in_use() == 3 == other.in_use()
    # A lease already held is granted again without taking more of the budget.
    assert mine.acquire(["a", "e"], 3, 30) == ["a"]
    # Another API key has a budget of its own.
    assert RedisInFlightBudget(second_client, "another-key").acquire(["x"], 3, 30) == ["x"]

    mine.release(["a", "b"])
    assert other.in_use() == 1
    assert other.acquire(["d", "e", "f"], 3, 30) == ["d", "e"]
    assert mine.in_use() == 3
    assert mine.release([]) == 0


def test_a_lapsed_lease_is_reclaimed(redis_client: redis.Redis, second_client: redis.Redis) -> None:
    crashed = RedisInFlightBudget(second_client, API_KEY)
    live = RedisInFlightBudget(redis_client, API_KEY)
    assert crashed.acquire(["a", "b"], 3, 30) == ["a", "b"]
    # A worker that died holding a lease: its lifetime has already run out.
    assert crashed.acquire(["c"], 3, -1) == ["c"]
    assert live.acquire(["d", "e"], 3, 30) == ["d"]
    assert live.in_use() == 3
    assert crashed.acquire(["c"], 3, 30) == []


def test_a_new_attempt_retires_the_old_task_uuid(store: RedisJobStore) -> None:
    job = make_job(slots=1)
    store.create_job(job, "hash")
    old = store.mint_task_uuid(job.id, 0, 1, "11111111-1111-4111-8111-111111111111")
    assert old is not None
    assert store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=old)
    assert store.new_attempt(
        job.id, 0, ["pending", "submitted"], 2, task_uuid=old, error_code="timeoutProvider"
    )
    slot = store.get_slot(job.id, 0)
    assert slot is not None
    assert (slot.state, slot.attempt, slot.task_uuid) == ("pending", 2, None)
    assert slot.previous_task_uuids == [old]
    # A duplicate of the old task's result can no longer move the slot.
    assert not store.new_attempt(job.id, 0, ["pending", "submitted"], 3, task_uuid=old)
    assert not store.transition_slot(job.id, 0, ["pending"], "received", task_uuid=old)
    new = store.mint_task_uuid(job.id, 0, 2, "22222222-2222-4222-8222-222222222222")
    assert new == "22222222-2222-4222-8222-222222222222"
    assert store.find_task(old) == (job.id, 0) and store.find_task(new) == (job.id, 0)


def test_jobs_waiting_for_the_budget_are_woken_oldest_first(redis_client: redis.Redis) -> None:
    budget = RedisInFlightBudget(redis_client, API_KEY)
    for job_id in ("first", "second", "third"):
        budget.wait(job_id)
    budget.wait("first")  # waiting again keeps its place in line
    assert budget.pop_waiters(2) == ["first", "second"]
    assert RedisInFlightBudget(redis_client, "another-key").pop_waiters(5) == []
    assert budget.pop_waiters(0) == []
    assert budget.pop_waiters(5) == ["third"]


def test_releasing_a_lease_says_whether_it_was_held(redis_client: redis.Redis) -> None:
    budget = RedisInFlightBudget(redis_client, API_KEY)
    assert budget.acquire(["a", "b"], 4, 60) == ["a", "b"]
    assert budget.release(["a", "zz"]) == 1
    assert budget.release(["a"]) == 0


def test_releasing_wakes_as_many_waiting_jobs_as_there_is_room_for(
    redis_client: redis.Redis,
) -> None:
    budget = RedisInFlightBudget(redis_client, API_KEY)
    assert budget.acquire(["a", "b", "c"], 3, 60) == ["a", "b", "c"]
    for job_id in ("first", "second", "third"):
        budget.wait(job_id)

    assert budget.release_and_wake(["a"], 3) == ["first"]
    assert budget.release_and_wake([], 2) == []  # no room: nobody woken
    assert budget.release_and_wake(["b", "c", "zz"], 3) == ["second", "third"]
    assert budget.in_use() == 0 and budget.pop_waiters(5) == []


def test_a_slot_and_its_jobs_state_are_read_together(store: RedisJobStore) -> None:
    job = make_job()
    store.create_job(job, "h")
    store.transition_job(job.id, ["queued"], "running")

    slot, state = store.slot_and_job_state(job.id, 0)

    assert slot is not None and (slot.job_id, slot.slot, slot.state) == (job.id, 0, "pending")
    assert state == "running"
    assert store.slot_and_job_state(job.id, 99) == (None, "running")
    assert store.slot_and_job_state("no-such-job", 0) == (None, None)


def test_a_task_is_located_with_its_slot_and_its_jobs_state_in_one_read(
    store: RedisJobStore,
) -> None:
    job = make_job()
    store.create_job(job, "h")
    store.transition_job(job.id, ["queued"], "running")
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    assert task_uuid

    found = store.locate_task(task_uuid)

    assert found is not None
    job_id, slot_no, slot, state = found
    assert (job_id, slot_no, state) == (job.id, 0, "running")
    assert slot is not None and slot.task_uuid == task_uuid and slot.state == "pending"
    assert store.locate_task(str(uuid.uuid4())) is None


def test_a_located_slot_carries_what_intake_reads_and_nothing_else(store: RedisJobStore) -> None:
    job = make_job()
    store.create_job(job, "h")
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    assert task_uuid
    store.transition_slot(job.id, 0, ["pending"], "submitted", model="xai:grok-imagine@image-pro")
    store.new_attempt(job.id, 0, ["submitted"], 2, error_code="timeout")
    task_uuid = store.mint_task_uuid(job.id, 0, 2, str(uuid.uuid4()))
    assert task_uuid
    store.transition_slot(job.id, 0, ["pending"], "stored", final_key="jobs/x/00.jpg", seed=7)

    found = store.locate_task(task_uuid)

    assert found is not None
    slot = found[2]
    whole = store.get_slot(job.id, 0)
    assert slot is not None and whole is not None
    assert (slot.state, slot.attempt, slot.task_uuid, slot.error_code) == (
        whole.state, whole.attempt, whole.task_uuid, whole.error_code
    )  # fmt: skip
    assert (slot.state, slot.attempt, slot.error_code) == ("stored", 2, "timeout")
    assert whole.final_key == "jobs/x/00.jpg" and whole.seed == 7
    assert slot.final_key is None and slot.seed is None


# ------------------------------------------------------------------ the due index
GRACE = 60.0  # the store's default RECONCILE_GRACE_SECONDS
FAR = 10**10  # a due time no write or pass in these tests reaches


def due_at(store: RedisJobStore, redis_client: redis.Redis, job_id: str) -> float | None:
    return redis_client.zscore(store.due_key, job_id)


def test_a_new_job_is_due_a_grace_period_after_its_creation_or_at_its_deadline(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    slow, quick = make_job(deadline=900), make_job(deadline=30)
    before = time.time()
    store.create_job(slow, "h")
    store.create_job(quick, "h")
    after = time.time()

    due = due_at(store, redis_client, slow.id)
    assert due is not None and before + GRACE <= due <= after + GRACE
    assert due_at(store, redis_client, quick.id) == quick.deadline_at
    # An idempotent replay writes nothing, so it does not move the first job's time.
    first = make_job(idempotency_key="order-7")
    store.create_job(first, "h")
    redis_client.zadd(store.due_key, {first.id: FAR}, xx=True)
    assert store.create_job(make_job(idempotency_key="order-7"), "h") == (first.id, "h")
    assert due_at(store, redis_client, first.id) == FAR


def test_every_write_to_a_job_makes_it_due_within_the_grace_period(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    task_uuid = str(uuid.uuid4())
    writes = [
        lambda: store.transition_job(job.id, ["queued"], "running"),
        lambda: store.mint_task_uuid(job.id, 0, 1, task_uuid),
        lambda: store.transition_slot(job.id, 0, ["pending"], "submitted", task_uuid=task_uuid),
        lambda: store.new_attempt(job.id, 0, ["submitted"], 2, task_uuid=task_uuid),
        lambda: store.set_job_fields(job.id, reason="waiting"),
    ]
    for write in writes:
        redis_client.zadd(store.due_key, {job.id: FAR}, xx=True)
        before = time.time()
        write()
        due = due_at(store, redis_client, job.id)
        assert due is not None and before + GRACE <= due <= time.time() + GRACE


def test_a_write_never_postpones_a_due_time_and_a_refused_one_leaves_it(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    redis_client.zadd(store.due_key, {job.id: 5}, xx=True)

    assert store.transition_slot(job.id, 0, ["pending"], "submitted")
    assert not store.transition_slot(job.id, 0, ["pending"], "received")

    assert due_at(store, redis_client, job.id) == 5


def test_retire_and_forget_drop_the_due_time_and_a_late_write_does_not_bring_it_back(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    ended, gone = make_job(slots=1), make_job(slots=1)
    store.create_job(ended, "h")
    store.create_job(gone, "h")
    assert store.transition_job(ended.id, ["queued"], "cancelled")

    store.retire_job(ended.id)
    store.forget_job(gone.id)

    assert redis_client.zrange(store.due_key, 0, -1) == []
    # A result that arrives after the job ended is still recorded on its slot.
    assert store.transition_slot(ended.id, 0, ["pending"], "discarded")
    store.set_job_fields(ended.id, manifest_version=2)
    store.mark_due({ended.id: 0})
    assert redis_client.zrange(store.due_key, 0, -1) == []


def test_a_reopened_job_is_due_again(store: RedisJobStore, redis_client: redis.Redis) -> None:
    job = make_job(slots=1)
    store.create_job(job, "h")
    assert store.transition_job(job.id, ["queued"], "failed")
    store.retire_job(job.id)

    before = time.time()
    store.reopen_job(job.id, before + 900, 2)

    due = due_at(store, redis_client, job.id)
    assert due is not None and before + GRACE <= due <= time.time() + GRACE


def test_claiming_takes_the_due_jobs_earliest_first_and_claims_each_for_the_grace_period(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    jobs = [make_job(deadline=900), make_job(deadline=900), make_job(deadline=900)]
    expiring = make_job(deadline=900)
    for job in [*jobs, expiring]:
        store.create_job(job, "h")
    now = time.time() + 2 * GRACE
    times = {jobs[0].id: 30.0, jobs[1].id: 10.0, jobs[2].id: 20.0, expiring.id: FAR}
    redis_client.zadd(store.due_key, times, xx=True)
    redis_client.zadd(store.active_key, {expiring.id: now + 5}, xx=True)
    redis_client.zadd(store.due_key, {expiring.id: 40.0}, xx=True)

    taken = store.claim_due_jobs(now, 3)

    assert taken == [
        (jobs[1].id, jobs[1].deadline_at),
        (jobs[2].id, jobs[2].deadline_at),
        (jobs[0].id, jobs[0].deadline_at),
    ]
    for job in jobs:
        assert due_at(store, redis_client, job.id) == now + GRACE
    assert store.claim_due_jobs(now, 3) == [(expiring.id, now + 5)]
    assert due_at(store, redis_client, expiring.id) == now + 5, "claimed until its deadline"
    assert store.claim_due_jobs(now, 3) == []


def test_claiming_drops_a_due_time_left_by_a_job_no_longer_active(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    redis_client.zadd(store.due_key, {"stale": 1})

    assert store.claim_due_jobs(time.time(), 10) == []
    assert redis_client.zrange(store.due_key, 0, -1) == []


def test_a_write_during_a_look_keeps_its_earlier_time_over_the_looks_own(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    job = make_job(slots=1, deadline=3600)
    store.create_job(job, "h")
    # The pass runs two grace periods after the job was written: its claim ends after that.
    now = time.time() + 2 * GRACE
    assert [job_id for job_id, _ in store.claim_due_jobs(now, 10)] == [job.id]
    assert due_at(store, redis_client, job.id) == now + GRACE

    before = time.time()
    assert store.transition_slot(job.id, 0, ["pending"], "submitted")  # while the pass looks
    store.mark_due({job.id: job.deadline_at})  # what the pass worked out from its older read

    due = due_at(store, redis_client, job.id)
    assert due is not None and before + GRACE <= due <= time.time() + GRACE


def test_backfill_makes_active_jobs_without_a_due_time_due_now(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    jobs = [make_job(slots=1) for _ in range(5)]
    for job in jobs:
        store.create_job(job, "h")
    assert store.backfill_due(page=2) == 0, "nothing missing: nothing walked"
    # Jobs written before the due index existed.
    redis_client.zrem(store.due_key, jobs[0].id, jobs[3].id, jobs[4].id)
    kept = [due_at(store, redis_client, job.id) for job in jobs[1:3]]

    assert store.backfill_due(page=2) == 3

    assert [due_at(store, redis_client, job.id) for job in jobs] == [0, *kept, 0, 0]
    assert store.backfill_due(page=2) == 0
