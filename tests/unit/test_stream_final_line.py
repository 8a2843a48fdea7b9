"""A streamed answer's final line adds mm's waits, read from Redis, to the runtime's durations; a
Redis restart at that instant must not turn the whole answer into an error (the 60-minute chaos
soak's streamed client got "Redis unavailable" for a job that had completed)."""

from __future__ import annotations

import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mm.gateway.ollama_shape import adjust_final_chunk
from mm.gateway.proxy import mm_waits


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_final_line_goes_out_without_mm_waits_while_redis_is_unreachable():
    unreachable = redis.Redis(port=_closed_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    waits = mm_waits(unreachable, "a-job")
    assert waits == (0.0, 0.0)
    final = {"done": True, "total_duration": 1_000, "load_duration": 0}
    assert adjust_final_chunk(final, *waits) == final
