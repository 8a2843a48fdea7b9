"""Putting back the jobs no worker holds any more, without waiting for kombu's visibility timeout.

kombu keeps each delivered, unacked message in the ``unacked`` hash (by delivery tag, with its
delivery time in ``unacked_index``) and restores it only once it is older than the visibility
timeout, which must exceed the longest job (an hour by default). mm knows sooner: a worker whose
heartbeat expired is gone, and a message delivered a while ago that no live worker runs was
stranded (its worker died before starting it, or lost the broker connection while holding it and
could neither ack nor restore it).
Such a message is restored the way kombu does it: atomically out of the unacked hash, back to the
head of its priority list; or, if its job already has a stored outcome, only taken out (acked).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from mm import keys, replies

UNACKED = "unacked"  # kombu's default unacked_key / unacked_index_key
UNACKED_INDEX = "unacked_index"

# The subset of the given job ids whose outcome (Celery result) is stored.
Finished = Callable[[set[str]], set[str]]


def _held_of(r: redis.Redis, job_ids: set[str]) -> dict[str, str]:
    """Delivery tag -> job id of the unacked messages of ``job_ids``."""
    # Only in-flight messages are in the hash (at most the cluster's worker slots), so a scan is cheap.
    held = {}
    for tag, raw in r.hscan_iter(UNACKED):
        job_id = json.loads(raw)[0].get("headers", {}).get("id")
        if job_id in job_ids:
            held[tag.decode()] = job_id
    return held


def _restore_tag(r: redis.Redis, tag: str, requeue: bool = True) -> bool:
    def transaction(pipe: redis.client.Pipeline) -> bool:
        raw = pipe.hget(UNACKED, tag)
        pipe.multi()
        pipe.zrem(UNACKED_INDEX, tag)
        pipe.hdel(UNACKED, tag)
        if not raw or not requeue:
            return bool(raw)
        payload, _exchange, routing_key = json.loads(raw)
        payload.setdefault("headers", {})["redelivered"] = True
        payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        priority = int(payload["properties"].get("priority") or 0)
        model = keys.model_from_queue(routing_key)
        target = keys.priority_list(model, priority) if model else routing_key
        pipe.rpush(target, json.dumps(payload))  # BRPOP takes from the right: served next
        pipe.hset(keys.job(payload["headers"]["id"]), "status", "queued")
        return True

    return replies.transacted(r, transaction, UNACKED)


def restore_jobs(r: redis.Redis, job_ids: set[str], finished: Finished) -> list[str]:
    """Requeue the unacked messages of ``job_ids`` at the head of their queues, except those whose job
    ``finished`` (only taken out); return the ids requeued."""
    if not job_ids:
        return []
    return _settle(r, _held_of(r, job_ids), finished)


def stranded_jobs(r: redis.Redis, running: set[str], delivered_before: float, finished: Finished) -> list[str]:
    """Requeue model jobs kombu holds as delivered since before ``delivered_before`` (epoch seconds)
    that are not in ``running`` (the jobs live workers run); return the ids requeued.

    Safe because ``finished`` is asked after ``running`` was read, and a worker takes a job out of
    its in-flight set only after the job's outcome is stored, or once storing it failed: a held job
    missing from ``running`` never started, has an outcome that ``finished`` sees, or lost its
    outcome and must run again. (One delivered more than the grace ago and not yet started would
    run twice; a worker starts what it takes at once.)
    """
    tags = [t.decode() for t in replies.members(r.zrangebyscore(UNACKED_INDEX, "-inf", delivered_before))]
    held = {}
    for tag, raw in zip(tags, r.hmget(UNACKED, tags) if tags else [], strict=True):
        if raw is None:
            continue
        payload, _exchange, routing_key = json.loads(raw)
        job_id = payload.get("headers", {}).get("id")
        if job_id and keys.model_from_queue(routing_key) and job_id not in running:
            held[tag] = job_id
    return _settle(r, held, finished)


def _settle(r: redis.Redis, held: dict[str, str], finished: Finished) -> list[str]:
    """Requeue each held message (tag -> job id) whose job has no stored outcome, its record saying
    queued again, and only take out (ack) the others; return the ids requeued."""
    done = finished(set(held.values())) if held else set()
    requeued = []
    for tag, job_id in held.items():
        if _restore_tag(r, tag, requeue=job_id not in done) and job_id not in done:
            requeued.append(job_id)
    return requeued
