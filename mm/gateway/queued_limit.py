"""Queued jobs per gateway API key (``MM_MAX_QUEUED_PER_KEY``): past the limit, a submission is
answered 429 with Retry-After before anything is enqueued, so one client cannot fill the queues.

A key's jobs that may still be queued are the sorted set ``mm:gateway:queued:<key id>`` (the key id
is a short hash of the key, never the key), scored by submission time. A submission reserves a
place first (a Lua script adds a reservation while the set is under the limit), submits, then puts
the job's id in the reservation's place. The set heals itself: once it is full, it is pruned before
a submission is refused. A job whose record no longer says ``queued`` (it started, ended, was
cancelled or expired, or its record is gone) leaves it, and so does a reservation older than
RESERVATION_S (its gateway died mid-submission). No limit applies without API keys
(``MM_GATEWAY_API_KEYS``) or with the setting at 0; the Batch API's jobs are not counted.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

import redis

from mm import keys, replies
from mm.gateway.base import ApiError, BaseHandler

if TYPE_CHECKING:
    from mm.client import Job

J = TypeVar("J", bound="Job")

KEY_ID_CHARS = 16  # hex characters of the key's SHA-256 that name its set
RESERVED = "reserved:"  # the prefix of a reservation's member
RESERVATION_S = 60.0  # a reservation older than this is a submission that never finished
# KEYS: the key's set. ARGV: limit, now, reservation, TTL (s). 1 if the reservation was added.
_RESERVE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class TooManyQueued(ApiError):
    """A submission refused: its API key has MM_MAX_QUEUED_PER_KEY jobs queued (429, Retry-After)."""

    def __init__(self, queued: int, limit: int):
        super().__init__(429, "", f"too many queued jobs: this API key has {queued} jobs waiting to start, the "
                                  f"most MM_MAX_QUEUED_PER_KEY allows ({limit}); submit again once some have started")


def key_id(api_key: str) -> str:
    """The short, one-way name of an API key in Redis."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:KEY_ID_CHARS]


async def within_limit(handler: BaseHandler, submit: Callable[[], J]) -> J:
    """Run the blocking ``submit`` on the gateway's threads, within the request's key's limit."""
    gw = handler.gw
    api_key = gw.key_of(handler.request.headers.get("Authorization"))
    if gw.settings.max_queued_per_key <= 0 or api_key is None:
        return await handler.run(submit)
    return await handler.run(admit, gw.r, key_id(api_key), gw.settings.max_queued_per_key,
                             gw.settings.result_expires_s, submit)


def admit(r: redis.Redis, key: str, limit: int, ttl_s: int, submit: Callable[[], J]) -> J:
    """Reserve a place among ``key``'s queued jobs, run ``submit`` and count its job there.

    Raises:
        TooManyQueued: ``limit`` of the key's jobs are still queued; ``submit`` was not called.
    """
    name = keys.gateway_queued(key)
    reservation = f"{RESERVED}{uuid.uuid4()}"
    reserve = functools.partial(r.register_script(_RESERVE), keys=[name])
    if not reserve(args=[limit, time.time(), reservation, ttl_s]):
        queued = prune(r, name, time.time())
        if queued >= limit or not reserve(args=[limit, time.time(), reservation, ttl_s]):
            raise TooManyQueued(queued, limit)
    try:
        job = submit()
    except BaseException:
        r.zrem(name, reservation)
        raise
    pipe = r.pipeline(transaction=False)
    pipe.zrem(name, reservation)
    pipe.zadd(name, {job.id: time.time()})
    pipe.execute()
    return job


def prune(r: redis.Redis, name: str, now: float) -> int:
    """Take out of the set ``name`` the jobs no longer queued and the stale reservations; how many stay."""
    scored = cast("list[tuple[bytes, float]]", r.zrange(name, 0, -1, withscores=True))
    members = {replies.text(member): score for member, score in scored}
    jobs = [m for m in members if not m.startswith(RESERVED)]
    pipe = r.pipeline(transaction=False)
    for job_id in jobs:
        pipe.hmget(keys.job(job_id), "status", "model")
    gone = [job_id for job_id, (status, model) in zip(jobs, pipe.execute(), strict=True)
            if (status is None and model is None) or (status is not None and status != b"queued")]
    gone += [m for m, at in members.items() if m.startswith(RESERVED) and at < now - RESERVATION_S]
    if gone:
        r.zrem(name, *gone)
    return len(members) - len(gone)
