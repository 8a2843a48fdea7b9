"""kombu's Redis and Sentinel transports with two fixes: a worker survives losing its broker, and a
message it took as Redis died is not lost (:class:`QoS`).

When the broker connection drops, Celery closes the consumer's connection, and kombu's channel
close tries to put the worker's unacknowledged messages back in their queues. By then the
transport has let go of its connection info, so building a Redis client for that fails with
``AttributeError: 'NoneType' object has no attribute 'hostname'`` (celery/kombu#582, #970). Celery
treats that as unrecoverable and the worker process exits, jobs in flight with it. Raised as the
connection error it is, kombu skips the restore as it does whenever Redis is away, Celery
reconnects, and the messages stay in kombu's unacked hash: the worker acks them when their jobs
end, or mm's leader requeues them after ``MM_ORPHAN_GRACE_S`` (:mod:`mm.redelivery`).

:func:`install` makes them what ``redis://``, ``rediss://`` and ``sentinel://`` URLs mean to kombu
in this process: by alias rather than Celery's ``broker_transport``, because kombu's failover to
the next sentinel URL resolves the transport from the URL's scheme again.
"""

from __future__ import annotations

import time
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis

HOLD_OUTAGE_S = 60.0  # a Redis restart with AOF, or a Sentinel failover, is over well within this
ALIASES = {"redis": "mm.broker_transport:Transport", "rediss": "mm.broker_transport:Transport",
           "sentinel": "mm.broker_transport:SentinelTransport"}


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that recording a delivered message as unacked waits out a Redis restart.

    kombu takes a message off its list (BRPOP) and records it as unacked in a second command. If
    Redis dies between the two, the message is in neither place: only this worker has it, and kombu
    drops it with the failed command, so its job waits forever. Retried until Redis is back (up to
    HOLD_OUTAGE_S), the record is written and the job runs as any held one does.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        deadline = time.monotonic() + HOLD_OUTAGE_S
        while True:
            try:
                return super().append(message, delivery_tag)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= deadline or self.channel.connection.client is None:  # or closed
                    raise
                time.sleep(0.25)


class _ClosedConnectionIsAConnectionError:
    """Mixed into kombu's Redis channels, before them: ``connection`` and ``_connparams`` are theirs."""

    connection: Any  # kombu's Transport (an annotation only: the channel sets it)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]  # kombu's, next in the MRO


class Channel(_ClosedConnectionIsAConnectionError, kombu_redis.Channel):
    """kombu's Redis channel; see the module docstring."""

    QoS = QoS


class SentinelChannel(_ClosedConnectionIsAConnectionError, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel; see the module docstring."""

    QoS = QoS


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


def install() -> None:
    """Point kombu's ``redis``, ``rediss`` and ``sentinel`` transport aliases at these classes."""
    kombu.transport.TRANSPORT_ALIASES.update(ALIASES)
    cache = getattr(kombu.transport, "_transport_cache", {})  # kombu's private memo of resolved aliases
    for alias in ALIASES:
        cache.pop(alias, None)
