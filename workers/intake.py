"""Jobs sent by plain Celery clients: validated, recorded and put on their model's queue.

``mm.submit`` and the gateway validate a job, write its record and send it to ``mm.model.<model>``
with an ``mm_submitted`` header. A stock Celery client (``send_task("mm.infer", ...)``) does none
of that: its message may sit in a default queue (``celery``, ``mm.default``) that every gpu-broker
consumes, or reach its model's queue with no record. Either way the worker admits it here first:
a malformed job fails at once with the validation message and never runs; a good one gets its
record, and one on the wrong queue is forwarded to its model's queue under the same id.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, cast

import redis
from celery import Task
from celery.exceptions import Ignore

from mm import client, deadlines, keys, registry
from mm.errors import JobFailed, ValidationError
from mm.settings import Settings
from mm.validation import JobRequest, validate

log = logging.getLogger("mm.worker")

# The request fields validate() takes besides the model (computed, so new fields need no edit here).
_FIELDS = frozenset(p for p in inspect.signature(validate).parameters
                    if p not in ("model", "known_models", "settings", "facts"))


def is_plain(task: Task) -> bool:
    """Whether the running job was sent without mm's client (no ``mm_submitted`` header)."""
    return task.request.get("mm_submitted") is None


def check(raw: Any, delivery_priority: int | None, r: redis.Redis, settings: Settings) -> JobRequest:
    """Validate a plain Celery job's request; raise :class:`ValidationError` naming the bad field."""
    if not isinstance(raw, dict):
        raise ValidationError("request", f"must be a JSON object with model and prompt or messages, got {raw!r:.60}")
    unknown = sorted(set(raw) - _FIELDS - {"model"})
    if unknown:
        raise ValidationError(unknown[0], f"unknown field; known: model, {', '.join(sorted(_FIELDS))}")
    fields = {k: v for k, v in raw.items() if k != "model"}
    fields.setdefault("priority", keys.priority_class(delivery_priority))
    model = raw.get("model")
    entry = registry.get(r, model) if isinstance(model, str) and model else None
    return validate(model, known_models=registry.names(r), settings=settings,
                    facts=entry.facts() if entry else None, **fields)


def admit(task: Task, raw: Any, r: redis.Redis, settings: Settings) -> tuple[dict[str, Any], float]:
    """Admit a plain Celery job: return its validated request and submit time, or end it.

    Raises:
        JobFailed: the request is malformed; the job's record says why and it never runs.
        Ignore: the job was on another queue and has been forwarded to its model's queue.
    """
    job_id = cast(str, task.request.id)  # a running task's
    delivery = task.request.delivery_info or {}
    record_key = keys.job(job_id)
    now = time.time()
    try:
        request = check(raw, delivery.get("priority"), r, settings)
    except ValidationError as exc:
        model = raw["model"] if isinstance(raw, dict) and isinstance(raw.get("model"), str) else ""
        refused = r.pipeline()
        refused.hset(record_key, mapping={"id": job_id, "model": model, "status": "failed",
                                          "error": f"invalid request: {exc}", "submitted_at": now, "completed_at": now})
        refused.expire(record_key, settings.result_expires_s)
        refused.execute()
        log.warning("job %s refused: %s", job_id, exc)
        raise JobFailed(f"invalid request: {exc}") from None
    # Kept from the first delivery, so a redelivered job keeps its place in the wait statistics.
    pipe = r.pipeline(transaction=False)
    for field, value in (("id", job_id), ("model", request.model), ("kind", request.kind),
                         ("priority", request.priority), ("submitted_at", now), ("metadata", "{}"),
                         ("status", "queued")):
        pipe.hsetnx(record_key, field, value)
    deadlines.note(pipe, job_id, now, request.deadline_s)
    pipe.expire(record_key, settings.result_expires_s)
    pipe.hget(record_key, "submitted_at")
    pipe.hget(record_key, "forwarded_at")
    submitted_at, forwarded_at = pipe.execute()[-2:]
    submitted_at = float(submitted_at)
    if delivery.get("routing_key") != keys.model_queue(request.model):
        if forwarded_at is None:  # a redelivered intake message must not put the job on its queue twice
            _forward(request, job_id, submitted_at)
            forwarded = r.pipeline(transaction=False)
            forwarded.hset(record_key, "forwarded_at", time.time())
            forwarded.lpush(keys.WAKE, 1)
            forwarded.execute()
        raise Ignore()
    return request.payload(), submitted_at


def _forward(request: JobRequest, job_id: str, submitted_at: float) -> None:
    client.send(request, job_id, submitted_at)
    log.info("job %s sent without mm's client: forwarded to %s", job_id, keys.model_queue(request.model))
