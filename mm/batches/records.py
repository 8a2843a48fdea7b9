"""Batches in Redis: one hash per batch (``mm:batch:<id>``) and an index by creation time.

The hash holds OpenAI's batch fields, the priority its jobs run at and ``enqueued``, how many of
its requests have been sent as jobs. Counts of ended requests are sets the workers add to
(:mod:`mm.batches.outcomes`), so a job counted twice is still counted once.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any, cast

import redis

from mm import keys, replies
from mm.errors import ValidationError
from mm.keys import PRIORITIES

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

# OpenAI's statuses; the first five are not final.
LIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")
TIME_FIELDS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
               "expired_at", "cancelling_at", "cancelled_at")
OUTCOMES = ("completed", "failed", "cancelled")
WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_METADATA_KEYS = 16
BATCH_ID = re.compile(r"^batch_[0-9a-f]{24}$")


def job_id(batch_id: str, index: int) -> str:
    """The id of the job that runs request ``index`` (0-based) of the batch."""
    return f"{batch_id}-{index}"


def window_s(window: Any) -> int:
    """Seconds in a completion window such as ``24h`` (OpenAI's only value; ``90s``, ``30m``, ``2d`` work too)."""
    match = WINDOW.match(window) if isinstance(window, str) else None
    if not match:
        raise ValidationError("completion_window", f"must be a duration such as 24h, not {window!r:.40}")
    return int(match.group(1)) * UNIT_S[match.group(2)]


def check_metadata(metadata: Any) -> dict[str, str]:
    """OpenAI's metadata: at most 16 string keys with string values; ``priority`` sets the jobs' priority."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError("metadata", f"must be an object of at most {MAX_METADATA_KEYS} string pairs")
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
               for k, v in metadata.items()):
        raise ValidationError("metadata", "keys must be strings up to 64 characters, values up to 512")
    if metadata.get("priority", "low") not in PRIORITIES:
        raise ValidationError("metadata.priority", f"must be one of {', '.join(PRIORITIES)}")
    return dict(metadata)


def create(r: redis.Redis, input_file_id: str, endpoint: str, window: str, metadata: dict[str, str]) -> str:
    """Record a new batch as ``validating`` and return its id (``batch_<hex>``)."""
    batch_id = "batch_" + secrets.token_hex(12)
    now = time.time()
    pipe = r.pipeline()  # MULTI: the index never names a batch without its hash
    pipe.hset(keys.batch(batch_id), mapping={
        "id": batch_id, "endpoint": endpoint, "input_file_id": input_file_id, "completion_window": window,
        "metadata": json.dumps(metadata), "priority": metadata.get("priority", "low"), "status": "validating",
        "created_at": now, "expires_at": now + window_s(window), "enqueued": 0,
    })
    pipe.zadd(keys.BATCHES, {batch_id: now})
    pipe.sadd(keys.BATCHES_LIVE, batch_id)
    pipe.execute()
    return batch_id


def get(r: redis.Redis, batch_id: str) -> dict[str, str] | None:
    """The batch's hash as text; None if there is no such batch."""
    if not BATCH_ID.match(batch_id):
        return None
    raw = r.hgetall(keys.batch(batch_id))
    return {replies.text(k): replies.text(v) for k, v in raw.items()} or None


def counts(r: redis.Redis, batch_id: str) -> dict[str, int]:
    """How many of the batch's requests ended completed, failed or cancelled."""
    pipe = r.pipeline(transaction=False)
    for outcome in OUTCOMES:
        pipe.scard(keys.batch_ended(batch_id, outcome))
    return dict(zip(OUTCOMES, (int(n) for n in pipe.execute()), strict=True))


def set_status(r: redis.Redis, batch_id: str, status: str, **fields: EncodableT) -> None:
    """Move the batch to ``status`` and stamp ``<status>_at``, with any other fields."""
    mapping: dict[FieldT, EncodableT] = {"status": status}
    for name, value in fields.items():
        mapping[name] = value
    if f"{status}_at" in TIME_FIELDS:
        mapping[f"{status}_at"] = time.time()
    pipe = r.pipeline()
    pipe.hset(keys.batch(batch_id), mapping=mapping)
    if status in FINAL:
        pipe.srem(keys.BATCHES_LIVE, batch_id)
    pipe.execute()


def stop(r: redis.Redis, batch_id: str, why: str, ttl_s: int) -> None:
    """Stop a batch (``why``: cancelled or expired): its jobs not started yet end without running.

    The marker workers check is set first, then the status; the gateway removes the queued
    messages and finalizes the batch once its running jobs have ended.
    """
    r.set(keys.batch_cancelled(batch_id), why, ex=ttl_s)
    if why == "expired":
        r.hset(keys.batch(batch_id), mapping={"status": "cancelling", "stop_reason": why, "expired_at": time.time()})
    else:
        set_status(r, batch_id, "cancelling", stop_reason=why)


def openai_object(record: dict[str, str], ended: dict[str, int]) -> dict[str, Any]:
    """The batch as OpenAI's API shows it, with live ``request_counts``."""
    times = {f: int(float(record[f])) if record.get(f) else None for f in TIME_FIELDS}
    errors = json.loads(record["errors"]) if record.get("errors") else None
    return {
        "id": record["id"], "object": "batch", "endpoint": record["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record["input_file_id"], "completion_window": record["completion_window"],
        "status": record["status"], "output_file_id": record.get("output_file_id") or None,
        "error_file_id": record.get("error_file_id") or None, **times,
        "request_counts": {"total": int(record.get("total") or 0), "completed": ended["completed"],
                           "failed": ended["failed"]},
        "metadata": json.loads(record.get("metadata") or "{}") or None,
    }


def page(r: redis.Redis, after: str | None, limit: int) -> tuple[list[str], bool]:
    """Batch ids newest first, starting after the batch ``after``; and whether more follow."""
    start = 0
    if after:
        rank = cast("int | None", r.zrevrank(keys.BATCHES, after))
        start = rank + 1 if rank is not None else 0
    ids = [replies.text(b) for b in replies.members(r.zrevrange(keys.BATCHES, start, start + limit))]
    return ids[:limit], len(ids) > limit


def live(r: redis.Redis) -> list[dict[str, str]]:
    """Every batch that is not final yet, oldest first."""
    found = [get(r, replies.text(batch_id)) for batch_id in r.smembers(keys.BATCHES_LIVE)]
    return sorted((b for b in found if b and b.get("status") in LIVE), key=lambda b: float(b["created_at"]))
