"""Connections to the Redis that holds mm's state (the same one Celery uses).

The one place mm makes its own Redis clients. ``MM_REDIS_URL`` may be ``redis://``, ``rediss://``
(TLS) or ``sentinel://`` (see :mod:`mm.redis_url`); with sentinel the client always talks to the
current master: after a failover its next connection asks the sentinels again.
"""

from __future__ import annotations

import functools

import redis
from redis.sentinel import Sentinel

from mm import redis_url
from mm.settings import get as get_settings

_CLIENT_KWARGS = {"health_check_interval": 30, "socket_keepalive": True}


@functools.lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    target = redis_url.parse(url)
    if target.is_sentinel:
        node_kwargs = {k: v for k, v in (("username", target.username), ("password", target.password)) if v}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(), db=target.db,
                            **node_kwargs, **_CLIENT_KWARGS)
        return sentinel.master_for(target.master_name, redis_class=redis.Redis)
    return redis.Redis.from_url(target.client_url(), **target.ssl_options(), **_CLIENT_KWARGS)


def connect(url: str | None = None) -> redis.Redis:
    """A shared, thread-safe client for ``url`` (default: ``MM_REDIS_URL``)."""
    return _client(url or get_settings().redis_url)
