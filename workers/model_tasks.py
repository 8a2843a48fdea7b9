"""The inference task run by model-bound workers."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import ollama
import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import task_postrun

from mm import keys, metrics, registry, store, streams
from mm.app import INFER_TASK, app
from mm.errors import JobFailed
from mm.settings import get as get_settings
from mm.workers import control, intake, worker_state  # noqa: F401  (control registers the bind commands)
from mm.workers.inference import build_result, call_with_retries

log = logging.getLogger("mm.worker")


@functools.lru_cache(maxsize=4)
def _runtime(url: str, timeout: float) -> ollama.Client:
    return ollama.Client(host=url, timeout=timeout)


def _resident_entry(raw_state: bytes | None, model: str) -> dict[str, Any] | None:
    if not raw_state:
        return None
    return next((m for m in json.loads(raw_state)["resident"] if m["model"] == model), None)


def _fail(pipe, job_id: str, reason: str, status: int | None = None) -> None:
    """Close the job's record as failed; ``status`` is the runtime's HTTP answer, for the gateway to repeat."""
    record = {"status": "failed", "error": reason, "completed_at": time.time()}
    if status is not None:
        record["error_status"] = status
    pipe.hset(keys.job(job_id), mapping=record)


def _write(pipe) -> None:
    """Execute the job's closing writes; one that Redis refuses is logged, never fails the job."""
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception):
            log.warning("job bookkeeping write refused: %s", reply)


class InferTask(Task):
    """The inference task's class: a job's closing writes wait until Celery stored its outcome."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:
        # Off the client's path: its result is out. Job.status() reads a stored outcome meanwhile.
        closing = getattr(self.request, "mm_closing", None)
        if closing is None:
            closing = store.connect().pipeline(transaction=False)
        if worker_state.current is not None:
            worker_state.current.job_ended(task_id, closing)
        _write(closing)


@task_postrun.connect
def _release_unstored(sender=None, task_id=None, **_) -> None:
    """Release a job whose outcome Celery could not store (its Redis went away as the job ended).

    Celery then skips ``after_return``. Left counted, the job would look in flight forever and its
    message would never be requeued; released, the leader requeues it after ``MM_ORPHAN_GRACE_S``.
    """
    if getattr(sender, "name", None) != INFER_TASK or worker_state.current is None:
        return
    release = store.connect().pipeline(transaction=False)
    if not worker_state.current.job_ended(task_id, release):
        return  # after_return closed it: the usual case
    log.warning("job %s: its outcome could not be stored; released for the leader to requeue", task_id)
    try:
        _write(release)
    except redis.ConnectionError as exc:  # the heartbeat prunes the id from the in-flight set later
        log.warning("job %s: release not written yet: %s", task_id, exc)


@app.task(name=INFER_TASK, bind=True, base=InferTask)
def infer(self, request: dict[str, Any], submitted_at: float | None = None) -> dict[str, Any]:
    """Run one job on this node's runtime, if its model is resident here; else requeue it.

    ``request`` holds what :func:`mm.submit` takes (``model``, ``prompt`` or ``messages``, ``kind``,
    ``options``, ...). A job sent by plain Celery is validated and recorded first (``intake``).
    """
    settings = get_settings()
    r = store.connect()
    if intake.is_plain(self):
        request, submitted_at = intake.admit(self, request, r, settings)
    job_id = self.request.id
    model = request["model"]
    me = worker_state.current
    node = me.node if me else settings.node
    hostname = self.request.hostname or ""

    # One round trip counts the job in flight, then reads all it needs. An unload sets its marker,
    # then reads what runs: in that order on both sides, either this read sees the marker or the
    # unload sees this job in flight and waits for it. (Order suffices; no MULTI needed.)
    pipe = r.pipeline(transaction=False)
    if me is not None:
        me.job_started(model, job_id, pipe)
    pipe.get(keys.node_state(node))
    pipe.exists(keys.unloading(node, model))
    pipe.incr(keys.deliveries(job_id))
    pipe.expire(keys.deliveries(job_id), settings.result_expires_s)
    pipe.hget(keys.MODELS, model)
    started = time.time()
    pipe.hset(keys.job(job_id), mapping={"status": "running", "started_at": started, "node": node,
                                         "worker": hostname})
    pipe.expire(keys.job(job_id), settings.result_expires_s)
    raw_state, unloading, deliveries, _, raw_entry, _, _ = pipe.execute()[-7:]
    resident = _resident_entry(raw_state, model)
    if resident is None or unloading:
        # Not a delivery: the job never started.
        undo = r.pipeline().decr(keys.deliveries(job_id)).hset(keys.job(job_id), "status", "queued")
        if me is not None:
            me.job_ended(job_id, undo)
        undo.execute()
        # Never let the runtime load a model behind the scheduler's back: put the job back.
        log.warning("job %s: %s is not resident on %s; requeued", job_id, model, node)
        if me is not None and getattr(me, "consumer", None) is not None:
            control.unbind_self(me.consumer, model)
        time.sleep(0.2)  # the leader rebinds within a tick; do not spin on the queue meanwhile
        raise Reject(f"{model} not resident on {node}", requeue=True)

    done = r.pipeline(transaction=False)  # the job's outcome and bookkeeping, in one round trip
    if deliveries > settings.max_deliveries:
        reason = f"dead-lettered after {deliveries - 1} deliveries without finishing (worker lost each time?)"
        done.rpush(keys.DEAD_LETTERS, json.dumps({"id": job_id, "model": model, "reason": reason,
                                                  "at": time.time(), "request": request}))
        _fail(done, job_id, reason)
        metrics.add_job_sample(done, **metrics.job_sample(model, node, submitted_at, time.time(), error="DeadLettered"))
        _write(done)
        raise JobFailed(reason)

    entry = registry.decode(raw_entry) if raw_entry else None
    publish = functools.partial(streams.publish, r, job_id) if request.get("stream") else None
    try:
        response = call_with_retries(
            _runtime(settings.runtime_url, settings.runtime_timeout_s), request,
            entry.load_options if entry else {}, settings, publish,
        )
    except JobFailed as exc:
        _fail(done, job_id, str(exc), exc.status)
        metrics.add_job_sample(done, **metrics.job_sample(model, node, submitted_at, started,
                                                     digest=resident.get("digest"),
                                                     error=type(exc.__context__ or exc).__name__))
        _write(done)
        if request.get("stream"):
            streams.publish_error(r, job_id, str(exc))
        raise
    # The load this job waited for, if the model was loaded after it was submitted.
    load_s = resident.get("load_s", 0.0) if resident.get("loaded_at", 0) > submitted_at else 0.0
    result = build_result(response, request, job_id=job_id, node=node, worker=hostname,
                          queue_wait_s=started - submitted_at, load_s=load_s)
    now = time.time()
    done.hset(keys.ACTIVITY, model, now)
    done.hset(keys.job(job_id), mapping={"status": "complete", "completed_at": now})
    metrics.add_job_sample(done, **metrics.job_sample(model, node, submitted_at, started, digest=resident.get("digest"),
                                                 timings=result["timings"]))
    self.request.mm_closing = done  # written by after_return, once Celery has stored the result
    return result
