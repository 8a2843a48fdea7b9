"""The leader lease and fencing tokens.

One broker leads at a time: it holds ``mm:lock:broker`` (``SET NX PX``) and acts with a token from
``INCR mm:fence``. Every command carries the token, and a node refuses any token older than the
newest it has seen or than the newest issued, so a leader paused past its lease cannot act when it
wakes, nor can the commands it left queued.
"""

from __future__ import annotations

import time
from typing import Literal

import redis

from mm import keys

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# A write done only while the lease is held: ARGV[1] the owner, ARGV[2] the command, the rest its arguments.
_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3))
end
return -1
"""

# Take the lease if free and, in the same step, the next fencing token: one more than the last, and
# never below Redis's clock in milliseconds, so tokens keep rising even when a failover lost the
# last INCR (async replication). Nobody sees the new holder before its token.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local token = redis.call('INCR', KEYS[2])
if token < floor then
  redis.call('SET', KEYS[2], floor)
  token = floor
end
return token
"""

# Accept a token only if it is at least the newest one this node has seen and the newest one issued
# (KEYS[2], the current term's): a command a former leader left queued is refused even on a node that
# has not heard from the new leader yet. Remember it.
_FENCE = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[1])
if token < seen then
  return seen
end
if token < issued then
  return issued
end
redis.call('SET', KEYS[1], token)
return 0
"""


class Lease:
    """A renewable lease on one key, held by ``owner``."""

    def __init__(self, r: redis.Redis, owner: str, ttl_ms: int, key: str = keys.BROKER_LEASE):
        self.r = r
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.key = key
        self.token: int | None = None
        self._valid_until = 0.0
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._if_held = r.register_script(_IF_HELD)

    def acquire(self) -> int | None:
        """Take the lease if free; return the new fencing token, else None."""
        started = time.monotonic()
        token = self._acquire(keys=[self.key, keys.FENCE], args=[self.owner, self.ttl_ms])
        if token is None:
            return None
        self.token = int(token)
        self._valid_until = started + self.ttl_ms / 1000
        return self.token

    def renew(self) -> bool:
        """Extend the lease; False (and the lease is dropped locally) if it was lost."""
        started = time.monotonic()
        try:
            ok = bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))
        except redis.RedisError:
            ok = False
        if ok:
            self._valid_until = started + self.ttl_ms / 1000
        else:
            self._valid_until = 0.0
            self.token = None
        return ok

    def valid(self) -> bool:
        """True while the last successful renewal still covers now (monotonic, survives SIGSTOP)."""
        return self.token is not None and time.monotonic() < self._valid_until

    def remove_if_held(self, command: Literal["SREM", "HDEL"], key: str, *members: str) -> bool:
        """``SREM``/``HDEL`` ``members`` of ``key`` only while this lease is held (atomically, so a
        leader paused past its lease cannot); True if it was held."""
        return int(self._if_held(keys=[self.key, key], args=[self.owner, command, *members])) >= 0

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError:
            pass
        self.token = None
        self._valid_until = 0.0


def check_fence(r: redis.Redis, node: str, token: int) -> int:
    """Record ``token`` for ``node``; return 0 if accepted, else the newer token already seen by the
    node or issued to a later leader."""
    return int(r.eval(_FENCE, 2, keys.node_fence_seen(node), keys.FENCE, int(token)))
