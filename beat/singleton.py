"""Beat as a singleton: each periodic task runs once per schedule slot, however many beats send it.

Celery beat has no built-in singleton: two beats send every job twice. Each run first claims
``SET mm:beat:claim:<task>:<slot> NX EX``; the message that loses the claim does nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from mm import keys, replies

MAX_RUNS = 1000


def claim(r: redis.Redis, task: str, slot: int, ttl_s: float, owner: str = "") -> bool:
    """True for exactly one caller per (task, slot) while the claim lives (``ttl_s``)."""
    return bool(r.set(keys.beat_claim(task, slot), owner or "1", nx=True, ex=max(1, int(ttl_s))))


def record_run(r: redis.Redis, task: str, slot: int | None, host: str, seconds: float) -> None:
    r.xadd(keys.BEAT_RUNS, {"run": json.dumps({"task": task, "slot": slot, "host": host, "at": time.time(),
                                               "seconds": round(seconds, 4)})},
           maxlen=MAX_RUNS, approximate=True)


def record_skip(r: redis.Redis, task: str) -> None:
    r.hincrby(keys.BEAT_SKIPPED, task, 1)


def runs(r: redis.Redis, count: int = MAX_RUNS) -> list[dict[str, Any]]:
    """Periodic runs done, oldest first."""
    return [json.loads(data[b"run"]) for _id, data in replies.entries(r.xrange(keys.BEAT_RUNS, count=count))]


def skipped(r: redis.Redis) -> dict[str, int]:
    return {replies.text(k): int(v) for k, v in r.hgetall(keys.BEAT_SKIPPED).items()}
