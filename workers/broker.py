"""Celery's Redis transport, kept alive across a broker restart while messages are unacked."""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # When Redis goes away, Celery closes the broken connection and the channel tries to
        # requeue its unacked messages through that same, already released, connection. kombu
        # then fails with AttributeError and the worker exits. Skipping the requeue loses
        # nothing: the messages stay in the unacked hash and return after the visibility
        # timeout, and the reconciler re-drives their work from the job store meanwhile.
        try:
            return super().restore_unacked_once(stderr)
        except (AttributeError, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("unacked messages left for redelivery after a broker connection loss",
                        extra={"error": repr(exc)})
            return None


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):  # type: ignore[misc]
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The hardened transport for a Redis or Sentinel broker URL; None leaves kombu's choice."""
    scheme = broker_url.split("://", 1)[0]
    if scheme in {"redis", "rediss"}:
        return "workers.broker:Transport"
    if scheme == "sentinel":
        return "workers.broker:SentinelTransport"
    return None
