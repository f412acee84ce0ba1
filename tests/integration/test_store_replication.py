"""REDIS_REPLICA_ACKS: a new job and a minted taskUUID are relied on once a replica has them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra import servers
from pipeline.models import Job
from pipeline.store import RedisJobStore

pytestmark = pytest.mark.integration

MODEL = "xai:grok-imagine@image-pro"


def _job() -> Job:
    now = time.time()
    return Job(
        id=str(uuid.uuid4()),
        tenant="acme",
        state="queued",
        model=MODEL,
        params={"model": MODEL, "positivePrompt": "a red fox", "numberResults": 1},
        slot_count=1,
        output_format="PNG",
        created_at=now,
        updated_at=now,
        deadline_at=now + 900,
    )


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    master = servers.start_redis(tmp_path / "master")
    replica = servers.start_redis(tmp_path / "replica")
    clients = (
        redis.Redis(port=master.port, decode_responses=True),
        redis.Redis(port=replica.port, decode_responses=True),
    )
    try:
        yield clients
    finally:
        for client in clients:
            client.close()
        replica.stop()
        master.stop()


def test_without_a_replica_the_step_fails_retryably_and_with_one_it_goes_on(
    master_and_replica: tuple[redis.Redis, redis.Redis],
) -> None:
    master, replica = master_and_replica
    store = RedisJobStore(master, replica_acks=1, replica_wait_ms=100)
    job = _job()
    # Written, but not confirmed: the caller gets a retryable error, never a 202 or a taskUUID.
    with pytest.raises(redis.TimeoutError, match="REDIS_REPLICA_ACKS"):
        store.create_job(job, "hash")
    with pytest.raises(redis.TimeoutError):
        store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))

    replica.replicaof("127.0.0.1", master.connection_pool.connection_kwargs["port"])
    deadline = time.monotonic() + 20
    while replica.info("replication")["master_link_status"] != "up":
        assert time.monotonic() < deadline, "the replica never connected"
        time.sleep(0.1)
    # The retry of the same steps goes on once a replica holds them.
    assert store.create_job(job, "hash")[0] == job.id
    assert replica.exists(store.job_key(job.id)) == 1
    task_uuid = store.mint_task_uuid(job.id, 0, 1, str(uuid.uuid4()))
    assert task_uuid is not None
    assert replica.exists(store.task_key(task_uuid)) == 1


def test_zero_replica_acks_asks_nothing_of_a_lone_server(
    master_and_replica: tuple[redis.Redis, redis.Redis],
) -> None:
    master, _ = master_and_replica
    store = RedisJobStore(master)
    job = _job()
    assert store.create_job(job, "hash") == (job.id, None)
