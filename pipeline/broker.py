"""Celery's Redis transport, kept alive across a broker restart while messages are unacked."""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.sentinel import SentinelManagedConnection

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
        except redis.ResponseError as exc:
            if not refuses_writes_for_now(exc):
                raise
            self._skip("unacked messages", exc)
            return None

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        """Requeueing messages past their visibility timeout is periodic and best-effort; kombu
        also runs it when a worker connects. Behind Sentinel, a new master refuses writes until
        a replica follows it (NOREPLICAS) or a demoted one answers READONLY; kombu lets that
        error stop the worker. The next round requeues them instead."""
        try:
            return super().restore_visible(start, num, interval)
        except redis.ResponseError as exc:
            if not refuses_writes_for_now(exc):
                raise
            self._skip("messages past their visibility timeout", exc)
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


class _WriteRefusalIsConnectionError:
    """During a failover Redis refuses writes for a few seconds: a demoted master answers
    READONLY, a new master waiting for its replica NOREPLICAS (min-replicas-to-write). kombu
    treats any such error answer as fatal and the worker exits, from wherever it met it (a
    queue bind, a pidbox reply, a requeue). Raised as a connection error instead, it makes kombu
    drop the connection and reconnect, as it does when Redis is away."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as exc:
            if not refuses_writes_for_now(exc):
                raise
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"Redis refuses writes for now: {exc}") from exc


class FailoverConnection(_WriteRefusalIsConnectionError, redis.Connection):
    pass


class SentinelFailoverConnection(_WriteRefusalIsConnectionError, SentinelManagedConnection):
    pass


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    connection_class = FailoverConnection


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):  # type: ignore[misc]
    QoS = QoS
    connection_class = SentinelFailoverConnection


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


# A Sentinel broker URL is one `sentinel://` URL per sentinel, joined by ';', and Celery takes
# the list for failover URLs: after a failed reconnect it switches to the next one, and kombu then
# picks the transport by that URL's scheme, dropping `broker_transport`. Naming the hardened
# transport for the scheme keeps it across the switch.
TRANSPORT_ALIASES["sentinel"] = "pipeline.broker:SentinelTransport"


def refuses_writes_for_now(exc: BaseException) -> bool:
    """A Redis answer that a later write may get past: a replica that is (still) read-only, or
    a master waiting for a replica (min-replicas-to-write)."""
    return isinstance(exc, redis.ReadOnlyError) or str(exc).startswith("NOREPLICAS")


def transport_for(broker_url: str) -> str | None:
    """The hardened transport for a Redis or Sentinel broker URL; None leaves kombu's choice."""
    scheme = broker_url.split("://", 1)[0]
    if scheme in {"redis", "rediss"}:
        return "pipeline.broker:Transport"
    if scheme == "sentinel":
        return "pipeline.broker:SentinelTransport"
    return None
