"""Redis behind Sentinel: one set of settings for the job store, the limiter and the broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from pipeline.config import Settings


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs; config has already checked their form."""
    pairs = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def sentinel_kwargs(settings: Settings, **timeouts: Any) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their own password, and short waits so one
    sentinel that is down costs a moment before the next is asked."""
    kwargs: dict[str, Any] = dict(timeouts)
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password.reveal()
    return kwargs


def master_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client for the current master of REDIS_SENTINEL_MASTER. Each new connection asks the
    sentinels where the master is, so after a failover the pool reconnects to the new one;
    a connection to a demoted master is dropped on its first READONLY answer."""
    password = settings.redis_password.reveal() if settings.redis_password else None
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        sentinel_addresses(settings),
        sentinel_kwargs=sentinel_kwargs(
            settings,
            socket_timeout=options.get("socket_connect_timeout", 2),
            socket_connect_timeout=options.get("socket_connect_timeout", 2),
        ),
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        db=settings.redis_db,
        password=password,
        **options,
    )
    return client


def limiter_storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The `limits` library's storage URI and the options it needs beyond the URI, for
    Flask-Limiter's counters in the same Redis as the job store."""
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    hosts = ",".join(settings.redis_sentinels)
    options: dict[str, Any] = {
        "db": settings.redis_db,
        # A counter read from a replica lags its increments: always ask the master.
        "use_replicas": False,
        # Given explicitly, or the library would send the data password to the sentinels.
        "sentinel_kwargs": {
            "password": settings.redis_sentinel_password.reveal()
            if settings.redis_sentinel_password
            else None,
            "socket_timeout": 2,
        },
    }
    if settings.redis_password:
        options["password"] = settings.redis_password.reveal()
    return f"redis+sentinel://{hosts}/{settings.redis_sentinel_master}", options


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Sentinel transport needs beyond its URLs; empty without Sentinel."""
    if not settings.redis_sentinels:
        return {}
    options: dict[str, Any] = {"master_name": settings.redis_sentinel_master}
    kwargs = sentinel_kwargs(settings, socket_timeout=2, socket_connect_timeout=2)
    options["sentinel_kwargs"] = kwargs
    return options
