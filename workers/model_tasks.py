"""The inference task run by model-bound workers."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import ollama
from celery.exceptions import Reject

from mm import keys, metrics, registry, store, streams
from mm.app import INFER_TASK, app
from mm.errors import JobFailed
from mm.settings import get as get_settings
from workers import control, worker_state  # noqa: F401  (control registers the bind commands)
from workers.inference import build_result, call_with_retries

log = logging.getLogger("mm.worker")


@functools.lru_cache(maxsize=4)
def _runtime(url: str, timeout: float) -> ollama.Client:
    return ollama.Client(host=url, timeout=timeout)


def _resident_entry(raw_state: bytes | None, model: str) -> dict[str, Any] | None:
    if not raw_state:
        return None
    return next((m for m in json.loads(raw_state)["resident"] if m["model"] == model), None)


def _fail(r, job_id: str, reason: str) -> None:
    r.hset(keys.job(job_id), mapping={"status": "failed", "error": reason, "completed_at": time.time()})


@app.task(name=INFER_TASK, bind=True)
def infer(self, request: dict[str, Any], submitted_at: float) -> dict[str, Any]:
    """Run one job on this node's runtime, if its model is resident here; else requeue it."""
    settings = get_settings()
    r = store.connect()
    job_id = self.request.id
    model = request["model"]
    me = worker_state.current
    node = me.node if me else settings.node
    hostname = self.request.hostname or ""

    # Count the job in flight before checking residency: an unload that starts now waits for it,
    # and one already under way has set its marker, which this check sees.
    if me is not None:
        me.job_started(model, job_id)
    try:
        # One round trip for everything the job needs to know before it runs.
        pipe = r.pipeline(transaction=False)
        pipe.get(keys.node_state(node))
        pipe.exists(keys.unloading(node, model))
        pipe.incr(keys.deliveries(job_id))
        pipe.expire(keys.deliveries(job_id), settings.result_expires_s)
        pipe.hget(keys.MODELS, model)
        started = time.time()
        pipe.hset(keys.job(job_id), mapping={"status": "running", "started_at": started, "node": node,
                                             "worker": hostname})
        raw_state, unloading, deliveries, _, raw_entry, _ = pipe.execute()
        resident = _resident_entry(raw_state, model)
        if resident is None or unloading:
            # Not a delivery: the job never started.
            r.pipeline().decr(keys.deliveries(job_id)).hset(keys.job(job_id), "status", "queued").execute()
            # Never let the runtime load a model behind the scheduler's back: put the job back.
            log.warning("job %s: %s is not resident on %s; requeued", job_id, model, node)
            if me is not None and getattr(me, "consumer", None) is not None:
                control.unbind_self(me.consumer, model)
            time.sleep(0.2)  # the leader rebinds within a tick; do not spin on the queue meanwhile
            raise Reject(f"{model} not resident on {node}", requeue=True)

        if deliveries > settings.max_deliveries:
            reason = f"dead-lettered after {deliveries - 1} deliveries without finishing (worker lost each time?)"
            r.rpush(keys.DEAD_LETTERS, json.dumps({"id": job_id, "model": model, "reason": reason,
                                                   "at": time.time(), "request": request}))
            _fail(r, job_id, reason)
            metrics.record_job(r, **metrics.job_sample(model, node, submitted_at, time.time(), error="DeadLettered"))
            raise JobFailed(reason)

        entry = registry.decode(raw_entry) if raw_entry else None
        publish = functools.partial(streams.publish, r, job_id) if request.get("stream") else None
        try:
            response = call_with_retries(
                _runtime(settings.runtime_url, settings.runtime_timeout_s), request,
                entry.load_options if entry else {}, settings, publish,
            )
        except JobFailed as exc:
            _fail(r, job_id, str(exc))
            if request.get("stream"):
                streams.publish_error(r, job_id, str(exc))
            metrics.record_job(r, **metrics.job_sample(model, node, submitted_at, started,
                                                       digest=resident.get("digest"),
                                                       error=type(exc.__context__ or exc).__name__))
            raise
    finally:
        if me is not None:
            me.job_ended(model, job_id)
    # The load this job waited for, if the model was loaded after it was submitted.
    load_s = resident.get("load_s", 0.0) if resident.get("loaded_at", 0) > submitted_at else 0.0
    result = build_result(response, request, job_id=job_id, node=node, worker=hostname,
                          queue_wait_s=started - submitted_at, load_s=load_s)
    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.ACTIVITY, model, time.time())
    pipe.hset(keys.job(job_id), mapping={"status": "complete", "completed_at": time.time()})
    pipe.execute()
    metrics.record_job(r, **metrics.job_sample(model, node, submitted_at, started, digest=resident.get("digest"),
                                               timings=result["timings"]))
    return result
