"""Jobs that exhausted their deliveries: list them with their reasons, and requeue one."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celery.result import AsyncResult

from mm import keys, replies, store
from mm.app import app

if TYPE_CHECKING:
    from mm.client import Job


def listing() -> list[dict[str, Any]]:
    """Dead-lettered jobs, oldest first: id, model, reason, at, request."""
    return [json.loads(raw) for raw in store.connect().lrange(keys.DEAD_LETTERS, 0, -1)]


def retry(job_id: str) -> Job:
    """Requeue a dead-lettered job under the same id with a fresh delivery count; return its Job."""
    from mm.client import _enqueue
    from mm.validation import JobRequest

    r = store.connect()
    for raw in r.lrange(keys.DEAD_LETTERS, 0, -1):
        letter = json.loads(raw)
        if letter["id"] != job_id:
            continue
        request = letter["request"]
        priority = r.hget(keys.job(job_id), "priority")
        fields = {k: request.get(k) for k in ("model", "kind", "prompt", "messages", "format", "system")}
        job_request = JobRequest(
            priority=replies.text(priority) if priority else "normal", options=request.get("options", {}),
            images=request.get("images", []), metadata=request.get("metadata", {}), **fields,
        )
        AsyncResult(job_id, app=app).forget()
        r.hdel(keys.job(job_id), keys.DELIVERIES_FIELD)
        r.lrem(keys.DEAD_LETTERS, 1, raw)  # type: ignore[arg-type]  # redis-py types the value as str; it is bytes
        return _enqueue(job_request, job_id=job_id)
    raise KeyError(f"no dead-lettered job {job_id}")
