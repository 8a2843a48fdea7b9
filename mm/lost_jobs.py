"""Jobs whose message the broker lost end failed, saying so, instead of waiting forever.

kombu's Redis transport takes a message off its list (BRPOP) and records it as held in a second
command. If Redis is killed after it carried out and saved the BRPOP but before its answer reached
the worker, or the worker is killed before it wrote the record, the message is in no list and no
worker has it: its job's record says ``queued`` for ever (RELIABILITY.md, the chaos soak). So the
leader looks once after each Redis restart, when Redis has been up for ``MM_ORPHAN_GRACE_S`` (every
worker cut off by the restart has counted what it took by then), and once each time it finds a
model-worker gone: a job whose record says ``queued``, submitted before the restart or the loss,
whose message is in no queue of its model and not held, on two looks ``LOOK_AGAIN_S`` apart, ends
``failed`` with the reason, so that its client learns it and can submit it again. A batch's jobs are left to their
batch, which sends them again; a stock Celery client's job has no record until a worker takes it,
so it cannot be told from one never sent.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from mm import cancel, events, keys, metrics, replies
from mm.app import app
from mm.errors import JobFailed

log = logging.getLogger("mm.leader")

LOOK_AGAIN_S = 1.0  # a message between a worker's BRPOP and its unacked write shows up by then
SCAN_COUNT = 1000
REASON = ("lost by the broker: a worker took the job's message off its queue as Redis or the worker "
          "died, so no worker has it; submit the job again")


def redis_started_by(r: redis.Redis) -> float:
    """The latest time Redis can have (re)started: it counts its uptime in whole seconds, so up to
    one second after now - uptime; endless if this user may not read INFO (any job may predate it)."""
    try:
        return time.time() - float(r.info("server").get("uptime_in_seconds", 0)) + 1.0
    except redis.ResponseError:
        return float("inf")


def vanished_by(r: redis.Redis) -> float:
    """The latest time a message can have vanished from the broker: when Redis last started or the
    leader last found a model-worker gone (see the module docstring)."""
    return max(redis_started_by(r), float(r.get(keys.WORKER_LOST_AT) or 0))


def submitted_before(r: redis.Redis, job_ids: list[str], at: float) -> list[str]:
    """Those of ``job_ids`` whose records say they were submitted before ``at``."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "submitted_at")
    return [j for j, t in zip(job_ids, pipe.execute() if job_ids else [], strict=True) if t and float(t) < at]


def _queued_before(r: redis.Redis, restarted_at: float) -> dict[str, tuple[str, float]]:
    """job id -> (model, submit time) of the records that say ``queued``, submitted before
    ``restarted_at``, not a batch's."""
    ids = [replies.text(k).removeprefix(keys.job("")) for k in r.scan_iter(match=keys.job("*"), count=SCAN_COUNT)]
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "status", "model", "submitted_at", "metadata")
    found = {}
    for job_id, (status, model, submitted, metadata) in zip(ids, pipe.execute(), strict=True):
        if status != b"queued" or model is None or submitted is None or float(submitted) >= restarted_at:
            continue
        if metadata and json.loads(metadata).get("batch_id"):
            continue
        found[job_id] = (replies.text(model), float(submitted))
    return found


def lost(r: redis.Redis, restarted_at: float) -> dict[str, tuple[str, float]]:
    """job id -> (model, submit time) of the queued jobs submitted before ``restarted_at`` whose
    messages are gone."""
    queued = _queued_before(r, restarted_at)
    if not queued:
        return {}
    gone = set(queued) - cancel.waiting(r, (m for m, _p in queued.values()))
    if gone:  # a second look: messages between a worker's BRPOP and its unacked write, or being put back
        time.sleep(LOOK_AGAIN_S)
        gone -= cancel.waiting(r, (queued[j][0] for j in gone))
        statuses = r.pipeline(transaction=False)
        for job_id in sorted(gone):
            statuses.hget(keys.job(job_id), "status")
        gone = {j for j, status in zip(sorted(gone), statuses.execute(), strict=True) if status == b"queued"}
    return {job_id: queued[job_id] for job_id in gone}


def fail_lost(r: redis.Redis, restarted_at: float) -> list[str]:
    """End ``failed`` (with the reason) every job the broker lost in the Redis restart, or with the
    worker lost, at ``restarted_at``."""
    found = lost(r, restarted_at)
    for job_id, (model, submitted_at) in sorted(found.items()):
        now = time.time()
        pipe = r.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping={"status": "failed", "error": REASON, "completed_at": now})
        metrics.add_job_sample(pipe, **metrics.job_sample(model, "", submitted_at, now, error="LostByBroker"))
        pipe.execute()
        app.backend.mark_as_failure(job_id, JobFailed(REASON))  # after the record: a reader finds the reason
    if found:
        log.error("%d jobs lost by the broker ended failed: %s", len(found), sorted(found))
        events.emit(r, "jobs_lost", jobs=len(found))
    return sorted(found)
