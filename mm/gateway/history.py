"""Deployment history: a model's loads, unloads, pins and failures, newest first.

``GET /api/models/<name>/history?n=`` merges the event stream (load, unload, pull, pin, their
``*_failed`` variants, rejected jobs) with the model's failed-job samples. ``DELETE`` clears the
model's records from this view (it hides everything before now); the event stream and the
metrics behind /metrics, rollups and alerts are left as they are.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from mm import events, keys, metrics, registry
from mm.gateway import status
from mm.gateway.base import ApiError, BaseHandler

KINDS = ("load", "unload", "pull", "pin", "load_failed", "unload_failed", "pull_failed", "reject")
DETAIL_FIELDS = ("node", "size", "seconds", "waited_s", "reason", "error", "pinned", "by", "jobs")


def _cleared_at(r: redis.Redis, model: str) -> float:
    raw = r.hget(keys.GATEWAY_HISTORY_CLEARED, model)
    return float(raw) if raw else 0.0


def records(r: redis.Redis, model: str, since: float = 0.0) -> list[dict[str, Any]]:
    """Every history record of ``model`` after ``since``, newest first."""
    found = []
    for event in events.recent(r, events.MAX_EVENTS, model=model):
        if event.get("kind") in KINDS and float(event.get("at", 0)) > since:
            found.append({"event": event["kind"], "at": float(event["at"])}
                         | {k: event[k] for k in DETAIL_FIELDS if event.get(k) is not None})
    now = metrics.now(r)
    for sample in metrics.raw_samples(r, since, now + 1, model):
        if sample["status"] == "error":
            found.append({"event": "job_failed", "at": sample["at"], "node": sample["node"],
                          "error": sample["error"], "queue_wait_s": sample["queue_wait_s"],
                          "latency_s": sample["latency_s"]})
    found.sort(key=lambda rec: rec["at"], reverse=True)
    # An unload carries no size: it is the size of the load it ends (the next older load on that node).
    for i, rec in enumerate(found):
        if rec["event"] == "unload" and "size" not in rec:
            load = next((o for o in found[i + 1:] if o["event"] == "load" and o.get("node") == rec.get("node")), None)
            if load and load.get("size"):
                rec["size"] = load["size"]
    for rec in found:
        rec["time"] = status.iso(rec["at"])
    return found


def history(r: redis.Redis, model: str, n: int) -> dict[str, Any]:
    cleared = _cleared_at(r, model)
    found = records(r, model, cleared)
    if not found and not r.hexists(keys.MODELS, model) and not cleared:
        raise ApiError(404, "model", f"unknown model {model!r:.120}: not registered and no history")
    entry = registry.get(r, model)
    return {"model": model, "registered": entry is not None, "count": min(n, len(found)), "total": len(found),
            "cleared_at": status.iso(cleared) if cleared else None, "history": found[:n]}


def clear(r: redis.Redis, model: str) -> dict[str, Any]:
    cleared = _cleared_at(r, model)
    hidden = len(records(r, model, cleared))
    if not hidden and not r.hexists(keys.MODELS, model) and not cleared:
        raise ApiError(404, "model", f"unknown model {model!r:.120}: not registered and no history")
    now = time.time()
    r.hset(keys.GATEWAY_HISTORY_CLEARED, model, now)
    return {"model": model, "cleared": hidden, "cleared_at": status.iso(now)}


class HistoryHandler(BaseHandler):
    async def get(self, name: str) -> None:
        n = int(self.query_number("n", 50, minimum=1, maximum=10_000, integer=True))
        self.send_json(await self.run(history, self.gw.r, name, n))

    async def delete(self, name: str) -> None:
        self.send_json(await self.run(clear, self.gw.r, name))
