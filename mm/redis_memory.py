"""Refusing new jobs while Redis is near its ``maxmemory``, before it evicts or refuses writes.

With ``maxmemory`` set and the ``noeviction`` policy (the only one that never drops a queued job),
a full Redis refuses writes: a job caught half-way would have its message without its record, or
the reverse. So a submission first looks at Redis's memory and is refused whole (``RedisFull``)
once ``used_memory`` reaches ``MM_REDIS_MEMORY_LIMIT`` of ``maxmemory``. The look is cached for a
second per process: one ``INFO memory`` per second, not per job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from mm.errors import RedisFull
from mm.settings import Settings

CACHE_S = 1.0
SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class Memory:
    """Redis's memory as ``INFO memory`` reports it."""

    used: int
    maxmemory: int  # 0: no limit
    policy: str

    @property
    def share(self) -> float:
        return self.used / self.maxmemory if self.maxmemory else 0.0


_seen: tuple[float, int, Memory | None] = (0.0, 0, None)  # (when, id of the client, what was read)


def read(r: redis.Redis) -> Memory:
    """Redis's used memory, its ``maxmemory`` and its eviction policy, now; no limit if this user
    may not run ``INFO`` (an ACL user without ``+info``: the guard is then off, never in the way)."""
    try:
        info = r.info("memory")
    except redis.exceptions.NoPermissionError:
        return Memory(0, 0, SAFE_POLICY)
    return Memory(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)),
                  str(info.get("maxmemory_policy", SAFE_POLICY)))


def _cached(r: redis.Redis) -> Memory:
    global _seen
    when, client, memory = _seen
    if memory is None or client != id(r) or time.monotonic() - when > CACHE_S:
        memory = read(r)
        _seen = (time.monotonic(), id(r), memory)
    return memory


def check(r: redis.Redis, settings: Settings) -> None:
    """Raise :class:`RedisFull` if Redis is at ``MM_REDIS_MEMORY_LIMIT`` of its ``maxmemory``."""
    if settings.redis_memory_limit <= 0:
        return
    memory = _cached(r)
    if memory.maxmemory and memory.share >= settings.redis_memory_limit:
        raise RedisFull(f"Redis is using {memory.share:.0%} of its maxmemory ({memory.used} of {memory.maxmemory} "
                        f"bytes; MM_REDIS_MEMORY_LIMIT is {settings.redis_memory_limit:.0%}): new jobs are refused "
                        "until queued jobs drain or maxmemory is raised")


def problems(memory: Memory, settings: Settings) -> list[str]:
    """What ``mm check`` says about Redis's memory: an evicting policy, or being near the limit."""
    found = []
    if memory.maxmemory and memory.policy != SAFE_POLICY:
        found.append(f"Redis maxmemory-policy is {memory.policy}: a full Redis would evict queued jobs and "
                     f"records; set maxmemory-policy {SAFE_POLICY}")
    if memory.maxmemory and settings.redis_memory_limit > 0 and memory.share >= settings.redis_memory_limit:
        found.append(f"Redis is using {memory.share:.0%} of its maxmemory: new jobs are refused "
                     f"(MM_REDIS_MEMORY_LIMIT {settings.redis_memory_limit:.0%})")
    return found
