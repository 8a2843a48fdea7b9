"""Putting back the jobs of a worker that died, without waiting for kombu's visibility timeout.

kombu keeps each delivered, unacked message in the ``unacked`` hash (by delivery tag) and restores
it only once it is older than the visibility timeout, which must exceed the longest job (an hour by
default). When mm knows a worker is gone (its heartbeat expired), it restores that worker's jobs at
once, the way kombu does: atomically out of the unacked hash, back to the head of their priority list.
"""

from __future__ import annotations

import json

import redis

from mm import keys

UNACKED = "unacked"  # kombu's default unacked_key / unacked_index_key
UNACKED_INDEX = "unacked_index"


def _tags_of(r: redis.Redis, job_ids: set[str]) -> list[str]:
    # Only in-flight messages are in the hash (at most the cluster's worker slots), so a scan is cheap.
    tags = []
    for tag, raw in r.hscan_iter(UNACKED):
        payload = json.loads(raw)[0]
        if payload.get("headers", {}).get("id") in job_ids:
            tags.append(tag.decode())
    return tags


def _restore_tag(r: redis.Redis, tag: str) -> bool:
    def transaction(pipe: redis.client.Pipeline) -> bool:
        raw = pipe.hget(UNACKED, tag)
        pipe.multi()
        pipe.zrem(UNACKED_INDEX, tag)
        pipe.hdel(UNACKED, tag)
        if not raw:
            return False
        payload, _exchange, routing_key = json.loads(raw)
        payload.setdefault("headers", {})["redelivered"] = True
        payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        priority = int(payload["properties"].get("priority") or 0)
        model = keys.model_from_queue(routing_key)
        target = keys.priority_list(model, priority) if model else routing_key
        pipe.rpush(target, json.dumps(payload))  # BRPOP takes from the right: served next
        return True

    return r.transaction(transaction, UNACKED, value_from_callable=True)


def restore_jobs(r: redis.Redis, job_ids: set[str]) -> list[str]:
    """Requeue the unacked messages of ``job_ids`` at the head of their queues; return the ids requeued."""
    if not job_ids:
        return []
    restored = []
    for tag in _tags_of(r, job_ids):
        raw = r.hget(UNACKED, tag)
        if raw and _restore_tag(r, tag):
            restored.append(json.loads(raw)[0]["headers"]["id"])
    return restored
