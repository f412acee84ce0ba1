"""Redis behind Sentinel: one set of settings drives the job store, the limiter and the broker."""

from __future__ import annotations

import pytest
import redis
from kombu.transport import redis as kombu_redis
from redis.sentinel import SentinelConnectionPool

from pipeline import broker
from pipeline.config import Settings, SettingsError
from pipeline.dispatch import create_celery
from pipeline.sentinel import broker_transport_options, limiter_storage
from pipeline.store import redis_client
from workers.base import is_retryable

SENTINELS = "10.0.0.20:26379,10.0.0.21:26379,10.0.0.22:26379"


def _settings(**env: str) -> Settings:
    return Settings.from_env({"REDIS_SENTINELS": SENTINELS, **env})


def test_without_sentinels_redis_url_is_used_as_before() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@10.0.0.5:6379/2"})
    assert settings.redis_sentinels == ()
    assert settings.broker_url == "redis://:pw@10.0.0.5:6379/2"
    assert limiter_storage(settings) == ("redis://:pw@10.0.0.5:6379/2", {})
    assert broker_transport_options(settings) == {}


def test_sentinels_name_the_store_the_broker_and_the_limiter() -> None:
    settings = _settings(
        REDIS_SENTINEL_MASTER="jobs",
        REDIS_PASSWORD="data-secret",
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
        REDIS_DB="3",
    )
    assert settings.redis_url == f"redis+sentinel://{SENTINELS}/jobs/3"
    assert settings.broker_url.split(";") == [
        f"sentinel://:data-secret@{item}/3" for item in SENTINELS.split(",")
    ]
    assert "data-secret" not in repr(settings) and "sentinel-secret" not in repr(settings)
    uri, options = limiter_storage(settings)
    assert uri == f"redis+sentinel://{SENTINELS}/jobs"
    assert options["password"] == "data-secret"
    assert options["db"] == 3 and options["use_replicas"] is False
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    transport = broker_transport_options(settings)
    assert transport["master_name"] == "jobs"
    assert transport["sentinel_kwargs"]["password"] == "sentinel-secret"


def test_the_sentinels_get_their_own_password_or_none() -> None:
    _uri, options = limiter_storage(_settings(REDIS_PASSWORD="data-secret"))
    # Not the data password: a sentinel without requirepass refuses an AUTH.
    assert options["sentinel_kwargs"]["password"] is None


def test_the_job_store_client_follows_the_master_with_the_usual_options() -> None:
    client = redis_client(_settings(REDIS_PASSWORD="data-secret", REDIS_DB="1"))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "imagine"
    assert pool.connection_kwargs["decode_responses"] is True
    assert pool.connection_kwargs["password"] == "data-secret"
    assert pool.connection_kwargs["db"] == 1
    assert pool.connection_kwargs["socket_timeout"] is not None
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_kwargs["host"] == "10.0.0.20"


def test_celery_uses_the_hardened_sentinel_transport() -> None:
    app = create_celery(_settings(REDIS_SENTINEL_MASTER="jobs"))
    assert app.conf.broker_transport == "pipeline.broker:SentinelTransport"
    assert app.conf.broker_transport_options["master_name"] == "jobs"
    assert app.conf.broker_transport_options["visibility_timeout"] == 3600


@pytest.mark.parametrize(
    "exc",
    [
        redis.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.ConnectionError("The previous master is now a slave"),
        redis.TimeoutError("0 of 1 Redis replicas confirmed a write"),
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
    ],
)
def test_a_failover_error_is_retried(exc: Exception) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_SENTINELS": "10.0.0.20"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "10.0.0.20:http"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": SENTINELS, "REDIS_URL": "redis://h:6379/0"}, "REDIS_URL"),
        ({"REDIS_SENTINELS": SENTINELS, "REDIS_SENTINEL_MASTER": "a b"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_PASSWORD": "pw"}, "REDIS_PASSWORD"),
        ({"REDIS_SENTINEL_MASTER": "jobs"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": SENTINELS, "REDIS_DB": "-1"}, "REDIS_DB"),
        ({"REDIS_REPLICA_ACKS": "x"}, "REDIS_REPLICA_ACKS"),
    ],
)
def test_a_bad_sentinel_setting_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_a_switch_to_the_next_sentinel_keeps_the_hardened_transport() -> None:
    settings = _settings()
    connection = create_celery(settings).connection_for_write()
    # What Celery does after a failed reconnect: the next URL of the ';' list.
    connection.switch(settings.broker_url.split(";")[1])
    assert isinstance(connection.transport, broker.SentinelTransport)
    connection.release()


class _RefusingQoS(broker.QoS):
    """The hardened QoS over a master that refuses writes (no sockets)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _released(self) -> bool:
        return False


@pytest.mark.parametrize(
    "error",
    [
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
        redis.ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
)
def test_requeueing_that_meets_a_failover_is_left_for_the_next_round(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(kombu_redis.QoS, "restore_visible", refuse)
    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked_once", refuse)
    qos = _RefusingQoS(error)
    assert qos.restore_visible() is None
    assert qos.restore_unacked_once() is None


def test_any_other_redis_error_still_stops_requeueing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    monkeypatch.setattr(kombu_redis.QoS, "restore_visible", refuse)
    with pytest.raises(redis.ResponseError):
        _RefusingQoS(redis.ResponseError("x")).restore_visible()
