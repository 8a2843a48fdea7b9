"""mm's transport takes a message off its queue and records it as held in one step
(mm.broker_transport._AtomicConsume): a consumer killed at any moment leaves it in a list or held.

kombu's own consume (BRPOP, then a second command recording the message) lost a stock Celery
client's job in the 60-minute chaos soak: its worker was SIGKILLed between the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from queue import Empty
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from mm import keys
from mm.broker_transport import BELLS_KEPT, Transport

QUEUE = "mm.model.take:1b"

# A consumer on mm's transport that sends its take and is SIGKILLed once Redis has answered it,
# before it reads the answer: the window kombu's BRPOP-then-record left open.
TAKE_AND_DIE = """
import os, select, signal, sys
from kombu import Connection
from mm.broker_transport import Transport
with Connection(sys.argv[1], transport=Transport) as conn:
    channel = conn.channel()
    channel.basic_consume(sys.argv[2], no_ack=False, callback=print, consumer_tag="dies")
    channel.client.connection = channel.client.connection_pool.get_connection()  # as kombu's poller does
    channel._brpop_start()
    readable, _, _ = select.select([channel.client.connection._sock], [], [], 30)
    os.kill(os.getpid(), signal.SIGKILL if readable else signal.SIGTERM)
"""


def _publish(conn: Connection, job_id: str, count: int = 1) -> None:
    exchange = Exchange(QUEUE, type="direct")
    producer = Producer(conn.channel())
    for _ in range(count):
        producer.publish({"job": job_id}, exchange=exchange, routing_key=QUEUE, headers={"id": job_id},
                         declare=[Queue(QUEUE, exchange, QUEUE)])


def _consume(conn: Connection, no_ack: bool, tag: str) -> tuple[Any, list[Any]]:
    """A channel of ``conn`` consuming QUEUE, and the list its messages are delivered to."""
    channel, got = conn.channel(), []
    channel.basic_consume(QUEUE, no_ack=no_ack, callback=got.append, consumer_tag=tag)
    return channel, got


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.config_set("maxmemory", 0)
    client.flushdb()
    client.close()


def test_a_consumer_killed_once_its_take_was_done_leaves_the_message_held(redis_url, r):
    with Connection(redis_url, transport=Transport) as conn:
        _publish(conn, "taken-then-killed")

    died = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, redis_url, QUEUE], capture_output=True,
                          text=True, timeout=60)

    assert died.returncode == -9, died.stderr  # killed with the answer unread
    assert r.llen(QUEUE) == 0
    (tag, raw), = r.hgetall("unacked").items()
    payload, exchange, routing_key = json.loads(raw)  # as kombu's QoS.append writes it
    assert payload["headers"]["id"] == "taken-then-killed" and (exchange, routing_key) == (QUEUE, QUEUE)
    assert payload["properties"]["delivery_tag"] == tag.decode() and r.zscore("unacked_index", tag)


def test_a_delivered_message_is_held_until_acked_and_a_no_ack_one_is_not(redis_url, r):
    with Connection(redis_url, transport=Transport) as conn:
        _publish(conn, "acked")
        channel, got = _consume(conn, no_ack=False, tag="acks")
        conn.drain_events(timeout=10)
        (message,) = got
        assert r.hexists("unacked", message.delivery_tag)
        message.ack()
        assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0

        channel.basic_cancel("acks")
        _publish(conn, "not-acked")
        channel.basic_consume(QUEUE, no_ack=True, callback=got.append, consumer_tag="no-acks")
        conn.drain_events(timeout=10)
        assert got[-1].headers["id"] == "not-acked" and r.hlen("unacked") == 0


def test_a_take_redis_refuses_for_memory_leaves_the_message_in_its_queue(redis_url, r):
    with Connection(redis_url, transport=Transport) as conn:
        _publish(conn, "kept")
        channel, got = _consume(conn, no_ack=False, tag="full")
        r.config_set("maxmemory", 1)  # every write that needs memory is refused (noeviction)
        channel.client.connection = channel.client.connection_pool.get_connection()  # as kombu's poller does
        channel._brpop_start()
        with pytest.raises(Empty):
            channel._brpop_read()
        assert r.llen(QUEUE) == 1 and not got and r.hlen("unacked") == 0

        r.config_set("maxmemory", 0)
        conn.drain_events(timeout=10)
        assert [m.headers["id"] for m in got] == ["kept"] and r.llen(QUEUE) == 0


def test_publishing_rings_the_queue_bell_which_keeps_a_bounded_number_of_rings(redis_url, r):
    with Connection(redis_url, transport=Transport) as conn:
        _publish(conn, "rung")
        assert r.llen(keys.bell(QUEUE)) == 1
        _publish(conn, "many", count=BELLS_KEPT + 10)
        assert r.llen(keys.bell(QUEUE)) == BELLS_KEPT and r.llen(QUEUE) == BELLS_KEPT + 11

        # An idle consumer, waiting on the bell, takes each message.
        _channel, got = _consume(conn, no_ack=True, tag="idle")
        while len(got) < BELLS_KEPT + 11:
            conn.drain_events(timeout=10)
        assert r.llen(QUEUE) == 0
