"""mm's event stream (a capped Redis stream): loads, unloads, pins, failures, alerts."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from mm import keys, replies

MAX_EVENTS = 10_000


def emit(r: redis.Redis, kind: str, **fields: Any) -> None:
    """Append one event; failures to record are never allowed to break the caller."""
    entry = {"kind": kind, "at": time.time()} | fields
    try:
        r.xadd(keys.EVENTS, {"event": json.dumps(entry, default=str)}, maxlen=MAX_EVENTS, approximate=True)
    except redis.RedisError:
        pass


def recent(r: redis.Redis, count: int = 100, model: str | None = None) -> list[dict[str, Any]]:
    """The newest events first, optionally only those of ``model``."""
    out = []
    for _id, data in replies.entries(r.xrevrange(keys.EVENTS, count=count if model is None else MAX_EVENTS)):
        event = json.loads(data[b"event"])
        if model is None or event.get("model") == model:
            out.append(event)
            if len(out) >= count:
                break
    return out
