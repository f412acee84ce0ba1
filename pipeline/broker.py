"""Celery's Redis transport, kept alive across a broker restart while messages are unacked."""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """When Redis goes away, Celery drops the broken connection and opens a new one, but the old
    channel still owns the messages it delivered: requeueing them at close, and acking or
    rejecting them when their tasks end, go through a connection that is already released, and
    kombu fails with AttributeError, which stops the worker. Skipping those calls loses nothing:
    the messages stay in the unacked hash and return after the visibility timeout, their tasks
    are idempotent, and the reconciler re-drives the work from the job store meanwhile."""

    def _released(self) -> bool:
        connection = getattr(self.channel, "connection", None)
        return connection is None or getattr(connection, "client", None) is None

    def _skip(self, what: str, exc: BaseException | None = None) -> None:
        log.warning(
            "broker connection lost: %s left for redelivery",
            what,
            extra={"error": repr(exc) if exc else "connection released"},
        )

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        if self._released():
            self._skip("unacked messages")
            return None
        try:
            return super().restore_unacked_once(stderr)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._skip("unacked messages", exc)
            return None

    def ack(self, delivery_tag: Any) -> Any:
        if self._released():
            self._skip("an acknowledged message")
            return None
        return super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> Any:
        if self._released():
            self._skip("a rejected message")
            return None
        return super().reject(delivery_tag, requeue=requeue)


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
        return "pipeline.broker:Transport"
    if scheme == "sentinel":
        return "pipeline.broker:SentinelTransport"
    return None
