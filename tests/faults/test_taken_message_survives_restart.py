"""A message a worker took off its queue just as Redis died is recorded as held once Redis is back,
not dropped (found by the chaos soak: a submitted job's message was in no queue and not held, and the
job waited forever)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from mm import broker_transport
from mm.broker_transport import Transport

QUEUE = "mm.model.taken:1b"


@pytest.fixture
def restarted(redis_url, redis_server):
    yield redis.Redis.from_url(redis_url)
    redis_server.restart()


def test_a_taken_message_is_recorded_as_held_once_redis_is_back(redis_url, redis_server, restarted):
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.channel()
        Producer(channel).publish({"job": 1}, exchange=Exchange(QUEUE, type="direct"), routing_key=QUEUE,
                                  declare=[Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)],
                                  headers={"id": "taken-job"})
        # What kombu's BRPOP took, before it records the message as unacked (its second command).
        message = channel.Message(json.loads(restarted.rpop(QUEUE)), channel=channel)

        redis_server.stop()
        back = threading.Timer(1.5, redis_server.start)
        back.start()
        began = time.monotonic()
        try:
            channel.qos.append(message, message.delivery_tag)  # kombu's own would raise here, and drop it
        finally:
            back.join()  # Redis is up again whatever happened, before the fixture restarts it

        assert time.monotonic() - began >= 1.0
        held = json.loads(restarted.hget("unacked", message.delivery_tag))
        assert held[0]["headers"]["id"] == "taken-job" and restarted.zscore("unacked_index", message.delivery_tag)
    assert broker_transport.Channel.QoS is broker_transport.QoS
