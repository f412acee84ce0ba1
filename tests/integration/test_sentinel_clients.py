"""Every Redis user reaches the master through a real sentinel: job store, limiter, broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from infra import servers, supervise
from pipeline.config import Settings
from pipeline.dispatch import create_celery
from pipeline.sentinel import limiter_storage
from pipeline.store import redis_client

pytestmark = pytest.mark.integration


@pytest.fixture
def sentinel_settings(tmp_path: Path) -> Iterator[Settings]:
    master = servers.start_redis(tmp_path / "master")
    port = supervise.free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor imagine 127.0.0.1 {master.port} 1\n"
    )
    sentinel = supervise.ManagedProcess(
        "sentinel",
        [servers.redis_executable(), str(conf), "--sentinel"],
        log_dir=tmp_path,
        env=supervise.child_env(None),
        cwd=tmp_path,
    ).start()
    try:
        supervise.wait_for_tcp("127.0.0.1", port, 20, process=sentinel)
        yield Settings.from_env({"REDIS_SENTINELS": f"127.0.0.1:{port}", "REDIS_DB": "2"})
    finally:
        supervise.stop_all([sentinel, master], timeout=5)


def test_the_job_store_client_writes_to_the_master(sentinel_settings: Settings) -> None:
    client = redis_client(sentinel_settings)
    client.set("sentinel-test", "written")
    assert client.get("sentinel-test") == "written"
    assert client.connection_pool.connection_kwargs["db"] == 2
    client.close()


def test_the_limiter_counts_on_the_master(sentinel_settings: Settings) -> None:
    uri, options = limiter_storage(sentinel_settings)
    assert uri.startswith("redis+sentinel://")
    storage = storage_from_string(uri, **options)
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(2)
    assert [limiter.hit(item, "tenant") for _ in range(3)] == [True, True, False]


def test_the_broker_sends_and_receives_through_the_sentinel(sentinel_settings: Settings) -> None:
    app = create_celery(sentinel_settings)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("sentinel-test")
        queue.put({"job": "id"})
        deadline = time.monotonic() + 10
        message = queue.get(timeout=max(0.1, deadline - time.monotonic()))
        assert message.payload == {"job": "id"}
        message.ack()
        queue.close()
