"""Connections to the Redis that holds mm's state (the same one Celery uses)."""

from __future__ import annotations

import functools

import redis

from mm.settings import get as get_settings


@functools.lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def connect(url: str | None = None) -> redis.Redis:
    """A shared, thread-safe client for ``url`` (default: ``MM_REDIS_URL``)."""
    return _client(url or get_settings().redis_url)
