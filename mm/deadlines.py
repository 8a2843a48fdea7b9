"""Job deadlines: a job submitted with ``deadline_s`` that has not started that long after its
submission ends ``expired`` and never runs.

Two places enforce it. A worker that takes the job checks the deadline before anything else (the
request carries ``deadline_s`` and the task its submit time: no Redis command), and ends it expired
if it is past. A job that no worker takes (its model is never loaded, every slot stays busy) is
ended by the leader: on submission its id goes into the sorted set ``mm:deadlines`` scored by the
second it is due, and every tick :func:`sweep` takes the queued ones past due off their queue
(:func:`mm.cancel.take_off`: a message a worker took meanwhile is left to that worker) and ends
them. A job submitted without a deadline costs no Redis command here.

An expired job's record says ``expired`` with the reason in ``error``; Celery holds it FAILURE with
:class:`~mm.errors.JobExpired` (so no redelivery runs it); its sample counts it among the failed
jobs with the error ``JobExpired``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from mm import cancel, events, keys, metrics, replies
from mm.app import app
from mm.batches import outcomes as batch_outcomes
from mm.errors import JobExpired

log = logging.getLogger("mm.leader")

SWEEP_BATCH = 200  # due jobs looked at per sweep; the rest wait for the next tick
RECHECK_S = 5.0  # a due job that a worker holds is looked at again this much later
ERROR = JobExpired.__name__  # the error class its metrics sample carries


def note(pipe: redis.client.Pipeline, job_id: str, submitted_at: float, deadline_s: float | None) -> None:
    """Queue, into ``pipe``, the job's entry in the deadline set (nothing without a deadline)."""
    if deadline_s is not None:
        pipe.zadd(keys.DEADLINES, {job_id: submitted_at + deadline_s}, nx=True)


def reason(deadline_s: float, waited_s: float) -> str:
    """The error text of a job that expired after waiting ``waited_s`` seconds."""
    return f"expired: not started within deadline_s={deadline_s:g} (waited {waited_s:.1f} s); it never ran"


def overdue(request: dict[str, Any], submitted_at: float, now: float) -> str | None:
    """Why the job must not start now (its deadline has passed); None if it may."""
    deadline_s = request.get("deadline_s")
    if deadline_s is None or now <= submitted_at + float(deadline_s):
        return None
    return reason(float(deadline_s), now - submitted_at)


def record_expired(pipe: redis.client.Pipeline, job_id: str, model: str, submitted_at: float, why: str, *,
                   node: str = "", request: dict[str, Any] | None = None) -> None:
    """Queue the writes that close the job's record as expired: its status and reason, its sample,
    its batch's count (``request``: its request, when known) and its deadline entry gone."""
    now = time.time()
    pipe.hset(keys.job(job_id), mapping={"status": "expired", "error": why, "completed_at": now})
    pipe.zrem(keys.DEADLINES, job_id)
    if request is not None:
        batch_outcomes.note(pipe, request, job_id, "failed")
    metrics.add_job_sample(pipe, **metrics.job_sample(model, node, submitted_at, now, error=ERROR))


def sweep(r: redis.Redis, now: float | None = None) -> list[str]:
    """End ``expired`` every queued job past its deadline (up to SWEEP_BATCH); return their ids.

    A due job that has ended (or whose record expired) leaves the set; one that a worker holds or
    runs is looked at again RECHECK_S later, so that one put back on its queue expires too.
    """
    now = time.time() if now is None else now
    due = replies.members(r.zrangebyscore(keys.DEADLINES, "-inf", now, start=0, num=SWEEP_BATCH))
    expired: list[str] = []
    for raw in due:
        job_id = replies.text(raw)
        status = _expire_queued(r, job_id, now)
        if status == "expired":
            expired.append(job_id)
        elif status is None or status in cancel.FINAL:
            r.zrem(keys.DEADLINES, job_id)
        else:
            r.zadd(keys.DEADLINES, {job_id: now + RECHECK_S}, xx=True)
    if expired:
        log.warning("EXPIRED %d jobs not started by their deadline: %s", len(expired), expired)
        events.emit(r, "jobs_expired", jobs=len(expired))
    return expired


def _expire_queued(r: redis.Redis, job_id: str, now: float) -> str | None:
    """End the job expired if it is still on its queue; its status then (None: no such job)."""
    pipe = r.pipeline(transaction=False)
    pipe.hmget(keys.job(job_id), "status", "model", "priority", "submitted_at")
    pipe.zscore(keys.DEADLINES, job_id)
    (status, model, priority, submitted), due = pipe.execute()
    if model is None or submitted is None or due is None:
        return None
    status = replies.text(status) if status else "queued"  # the record's status is written just after the send
    if status != "queued":
        return status
    name = replies.text(model)
    if not cancel.take_off(r, cancel.job_lists(name, replies.text(priority) if priority else None),
                           lambda found: found == job_id, limit=1):
        return status  # a worker holds it: it checks the deadline before running it
    submitted_at = float(submitted)
    why = reason(due - submitted_at, now - submitted_at)
    done = r.pipeline(transaction=False)
    record_expired(done, job_id, name, submitted_at, why)
    done.execute()
    app.backend.mark_as_failure(job_id, JobExpired(why))  # after the record: a reader of the outcome finds the reason
    return "expired"
