"""kombu's Redis and Sentinel transports with three fixes: a worker survives losing its broker, a
message it took as Redis died is not lost (:class:`QoS`), and neither is one it took as it died
(:class:`_AtomicConsume`).

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

import hashlib
import time
from queue import Empty
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from mm import keys

HOLD_OUTAGE_S = 60.0  # a Redis restart with AOF, or a Sentinel failover, is over well within this
BELLS_KEPT = 64  # rings beyond the number of idle consumers of a queue wake nobody

# KEYS: kombu's unacked hash and index, then the lists to take from, in the order to serve them.
# ARGV: now (epoch seconds), then per list "1" if its consumer acks (record the message as held).
# One EXISTS answers an idle consumer's poll (Redis deletes an emptied list). The message is read
# (LINDEX), recorded, then popped, so that a write Redis refuses (out of memory) leaves it in its
# list. The stored value is what kombu's QoS.append writes: [payload, exchange, routing key].
TAKE_SCRIPT = """
if redis.call('EXISTS', unpack(KEYS, 3)) == 0 then return false end
for i = 3, #KEYS do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local recorded = 0
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if ARGV[i - 1] == '1' and type(tag) == 'string' then
      local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
      redis.call('HSET', KEYS[1], tag, '[' .. item .. ', ' .. cjson.encode(info['exchange'] or '') .. ', '
                 .. cjson.encode(info['routing_key'] or '') .. ']')
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
      recorded = 1
    end
    redis.call('RPOP', KEYS[i])
    return {KEYS[i], item, recorded}
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
ALIASES = {"redis": "mm.broker_transport:Transport", "rediss": "mm.broker_transport:Transport",
           "sentinel": "mm.broker_transport:SentinelTransport"}


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS: a message :class:`_AtomicConsume` recorded as it took it is not written
    again, and recording one taken by kombu's own two steps waits out a Redis restart.

    kombu's own consume (``basic_get``, or with a ``global_keyprefix``) takes a message off its list
    and records it as unacked in a second command. If Redis dies between the two, only this worker
    has it, and kombu drops it with the failed command, so its job waits forever. Retried until
    Redis is back (up to HOLD_OUTAGE_S), the record is written and the job runs as any held one does.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded: set[str] = getattr(self.channel, "recorded_tags", set())
        if delivery_tag in recorded:  # taken and recorded in one script
            recorded.discard(delivery_tag)
            return virtual.QoS.append(self, message, delivery_tag)
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


class _AtomicConsume:
    """Mixed into kombu's Redis channels, before them: take a message and record it as held in one step.

    kombu takes a message with BRPOP and records it in its unacked hash with a second command. A
    worker killed between the two had the only copy: the job was lost, and a stock Celery client's
    job has no record by which mm could tell (the 60-minute chaos soak lost one so). Here one Lua
    script takes the message off the first non-empty list and records it as held, so it is always in
    a list or held, and a held message whose worker died is put back (mm.redelivery). Redis cannot
    block inside a script, so an idle consumer waits on its queues' bell lists (BRPOP, up to
    ``polling_interval``), which mm's publishers ring; a stock client's message is taken at the next
    poll. Not used with ``global_keyprefix`` (mm sets none): kombu's own consume then.
    """

    # kombu's channel attributes this mixin reads (annotations only).
    client: Any
    connection: Any
    global_keyprefix: str
    sep: str
    priority_steps: list[int]
    unacked_key: str
    unacked_index_key: str
    brpop_timeout: Any
    active_queues: Any
    _queue_cycle: Any
    _in_poll: Any
    _brpop_sent_at: float | None
    _q_for_pri: Any
    conn_or_acquire: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded_tags: set[str] = set()  # taken by the script, read by QoS.append
        self._no_ack_queues: set[str] = set()
        self._script_loaded = False  # Redis has the script: EVALSHA will do
        self._idle = False  # the last take found nothing: wait for a bell next
        self._sent = ""
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[misc]  # kombu's

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        batch = kwargs.get("_publish_batch")
        super()._put(queue, message, **kwargs)  # type: ignore[misc]  # kombu's, next in the MRO
        bell = keys.bell(queue)
        if batch is not None:
            batch.add("lpush", bell, 1)
            batch.add("ltrim", bell, 0, BELLS_KEPT - 1)
            return
        with self.conn_or_acquire() as client:
            client.pipeline(transaction=False).lpush(bell, 1).ltrim(bell, 0, BELLS_KEPT - 1).execute()

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix:
            return super()._brpop_start(timeout)  # type: ignore[misc]  # kombu's
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        if self._idle:
            command: list[Any] = ["BRPOP", *(keys.bell(q) for q in queues), timeout or self.brpop_timeout]
        else:
            lists = [(self._q_for_pri(q, pri), q) for pri in self.priority_steps for q in queues]
            acks = ["0" if q in self._no_ack_queues else "1" for _key, q in lists]
            args = [2 + len(lists), self.unacked_key, self.unacked_index_key, *(k for k, _q in lists),
                    time.time(), *acks]
            command = ["EVALSHA", TAKE_SHA, *args] if self._script_loaded else ["EVAL", TAKE_SCRIPT, *args]
        self._sent = command[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)
        return None

    def _brpop_read(self, **options: Any) -> bool:
        if self.global_keyprefix:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]  # kombu's
        try:
            return self._take_reply(self._sent, **options)
        finally:
            self._in_poll = None
            getattr(self, "_flush_brpop_reauth", lambda: None)()  # kombu >= 5.7

    def _take_reply(self, sent: str, **options: Any) -> bool:
        try:
            reply = self.client.parse_response(self.client.connection, sent, **options)
        except self.connection_errors:  # type: ignore[attr-defined]  # kombu's
            self.client.connection.disconnect()  # the next poll reconnects
            raise
        except redis.ResponseError as exc:
            if isinstance(exc, redis.exceptions.NoScriptError):  # Redis restarted: send the script again
                self._script_loaded = False
            elif isinstance(exc, redis.exceptions.OutOfMemoryError):  # nothing taken: wait a poll interval
                self._idle = True
            else:
                raise
            raise Empty() from exc
        if sent == "BRPOP":  # rung, or the poll interval passed
            self._idle = False
            raise Empty()
        self._script_loaded = True  # EVAL loads it, EVALSHA found it
        if not reply:
            self._idle = True
            raise Empty()
        key, item, recorded = reply
        message = loads(bytes_to_str(item))
        if recorded:
            self.recorded_tags.add(message["properties"]["delivery_tag"])
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.connection._deliver(message, queue)
        return True


class Channel(_AtomicConsume, _ClosedConnectionIsAConnectionError, kombu_redis.Channel):
    """kombu's Redis channel; see the module docstring."""

    QoS = QoS


class SentinelChannel(_AtomicConsume, _ClosedConnectionIsAConnectionError, kombu_redis.SentinelChannel):
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
