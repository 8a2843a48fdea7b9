"""Cancelling jobs: a queued one is taken off its queue, a running one is stopped by its worker.

A cancel first writes the marker ``mm:cancel:<job id>`` (expiring with the job's record), then looks
for the job's message on its model's priority lists (kombu's Redis lists). Found and removed there,
the job never ran: its record says ``cancelled`` and Celery holds it REVOKED at once. Not found, a
worker holds the message: it ends the job cancelled when it starts it (it reads the marker first),
or, running it, sees the marker within a fraction of a second, closes the runtime call (the runtime
stops generating) and frees its slot. A message redelivered later meets the marker too.

Used by ``Job.cancel``, ``mm jobs cancel``, ``DELETE /api/job/<id>``, the gateway when its client
goes away, and the Batch API (:func:`take_off` and :func:`end_cancelled` for a stopped batch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import states
from celery.result import AsyncResult

from mm import keys, replies
from mm.app import app
from mm.batches import outcomes as batch_outcomes

FINAL = ("complete", "failed", "cancelled", "expired")
PAGE = 500  # messages read per LRANGE while looking for one job's message
CELERY_ENDED = {states.SUCCESS: "complete", states.FAILURE: "failed", states.REVOKED: "cancelled"}
CLIENT_GONE = "cancelled: the gateway's client disconnected before the answer was complete"


@dataclass(frozen=True)
class Outcome:
    """What a cancel did: ``cancelled`` (it was queued; it ended now, never run), ``stopping`` (a
    worker holds it and stops it), ``ended`` (it had ended: nothing changed) or ``unknown`` (no such
    job). ``status`` is the job's status then."""

    result: str
    status: str


def message_id(raw: bytes | str, unacked: bool = False) -> str | None:
    """The task id of a kombu message (as queued, or as kombu keeps it unacked)."""
    try:
        message = json.loads(raw)
        if unacked:
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def model_lists(models: Iterable[str]) -> list[str]:
    """Every priority list of ``models``' queues."""
    return [keys.priority_list(model, step) for model in models for step in keys.PRIORITY_STEPS]


def waiting(r: redis.Redis, models: Iterable[str]) -> set[str]:
    """Ids of the jobs whose messages wait on a queue of ``models`` or are held by a worker (kombu's
    unacked hash), read a page at a time. The held ones are read before the queues as well as after:
    a message put back from held onto its queue while the queues are read is seen either way."""
    found = _held(r)
    for queue in model_lists(sorted(set(models))):
        start = 0
        while page := r.lrange(queue, start, start + PAGE - 1):
            found |= {job_id for raw in page if (job_id := message_id(raw))}
            start += PAGE
    return found | _held(r)


def _held(r: redis.Redis) -> set[str]:
    return {job_id for raw in r.hvals("unacked") if (job_id := message_id(raw, unacked=True))}


def job_lists(model: str, priority: str | None) -> list[str]:
    """The lists a job of ``model`` may be queued on, its own ``priority``'s first."""
    own = keys.priority_list(model, keys.PRIORITIES.get(priority or "", 0))
    return [own, *(q for q in model_lists([model]) if q != own)]


def take_off(r: redis.Redis, lists: Iterable[str], wanted: Callable[[str], bool],
             limit: int | None = None) -> list[str]:
    """Remove from ``lists`` the messages whose job id is ``wanted`` (at most ``limit`` of them);
    return the ids removed. LREM removes only a message still there, so a worker that took one
    meanwhile runs it and no job is both removed and run."""
    removed: list[str] = []
    for queue in lists:
        start = 0
        while True:
            page = r.lrange(queue, start, start + PAGE - 1)
            taken = 0
            for raw in page:
                job_id = message_id(raw)
                if job_id and wanted(job_id) and r.lrem(queue, 1, cast(str, raw)):
                    removed.append(job_id)
                    taken += 1
                    if limit is not None and len(removed) >= limit:
                        return removed
            if len(page) < PAGE:
                break
            start += PAGE - taken  # what was removed shifted the rest of the list to the left
    return removed


def record_cancelled(pipe: redis.client.Pipeline, job_id: str, reason: str, request: dict[str, Any] | None) -> None:
    """Queue the writes that close the job's record as cancelled (and count it in its batch)."""
    pipe.hset(keys.job(job_id), mapping={"status": "cancelled", "error": reason, "completed_at": time.time()})
    if request is not None:
        batch_outcomes.note(pipe, request, job_id, "cancelled")


def end_cancelled(r: redis.Redis, job_id: str, reason: str, batch_id: str | None = None) -> None:
    """End a job taken off its queue: record ``cancelled`` (counted in ``batch_id``), Celery REVOKED."""
    pipe = r.pipeline(transaction=False)
    record_cancelled(pipe, job_id, reason, {"metadata": {"batch_id": batch_id}} if batch_id else None)
    pipe.execute()
    app.backend.mark_as_revoked(job_id, reason)


def requested(r: redis.Redis, job_id: str, request: dict[str, Any]) -> str | None:
    """Why the job must not run (it was cancelled, or its batch was cancelled or expired), in one
    round trip; None if it may."""
    batch_id = batch_outcomes.batch_of(request)
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.cancel(job_id))
    if batch_id is not None:
        pipe.exists(keys.batch_cancelled(batch_id))
    marker, *batch_stopped = pipe.execute()
    if marker:
        return replies.text(marker)
    if batch_stopped and batch_stopped[0]:
        return f"cancelled: batch {batch_id} was cancelled or expired before the job ran"
    return None


def _record(r: redis.Redis, job_id: str) -> dict[str, str] | None:
    """The fields of the job's record a cancel needs, its status settled; None: no such job."""
    raw = r.hmget(keys.job(job_id), "status", "model", "priority", "metadata")
    if raw[0] is None and raw[1] is None:
        return None
    record = {name: replies.text(value) for name, value in zip(("status", "model", "priority", "metadata"), raw,
                                                                strict=True) if value is not None}
    record.setdefault("status", "queued")  # written just after the send: it is on its queue
    if record["status"] not in FINAL:
        record["status"] = CELERY_ENDED.get(AsyncResult(job_id, app=app).state, record["status"])
    return record


def status(r: redis.Redis, job_id: str) -> str | None:
    """The job's status (its record's, or Celery's stored outcome when that is newer); None: unknown."""
    record = _record(r, job_id)
    return None if record is None else record["status"]


def cancel(r: redis.Redis, job_id: str, reason: str, expires_s: int) -> Outcome:
    """Cancel the job ``job_id`` (see the module's description); ``reason`` starts with ``cancelled:``."""
    record = _record(r, job_id)
    if record is None:
        return Outcome("unknown", "unknown")
    if record["status"] in FINAL:
        return Outcome("ended", record["status"])
    r.set(keys.cancel(job_id), reason, ex=expires_s)
    # A running job's message is held by its worker: only a queued one is looked for (one put back
    # meanwhile, its model gone, meets the marker).
    if record["status"] == "queued" and record.get("model"):
        if take_off(r, job_lists(record["model"], record.get("priority")), lambda found: found == job_id, limit=1):
            end_cancelled(r, job_id, reason, _batch_of(record.get("metadata")))
            return Outcome("cancelled", "cancelled")
    return Outcome("stopping", record["status"])


def _batch_of(metadata: str | None) -> str | None:
    try:
        decoded = json.loads(metadata) if metadata else None
    except ValueError:
        return None
    return batch_outcomes.batch_of({"metadata": decoded})


def wait_ended(r: redis.Redis, job_id: str, timeout: float, interval: float = 0.05) -> str | None:
    """Wait up to ``timeout`` seconds for the job to end; its status then."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(r, job_id)
        if current is None or current in FINAL or time.monotonic() >= deadline:
            return current
        time.sleep(interval)
