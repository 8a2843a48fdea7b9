"""The inference task run by model-bound workers."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar, cast

import ollama
import redis
from celery import Task, states
from celery.exceptions import Ignore, Reject
from celery.signals import task_postrun

from mm import cancel, deadlines, keys, metrics, registry, replies, result_cache, store, streams
from mm.app import INFER_TASK, app
from mm.batches import outcomes as batch_outcomes
from mm.errors import JobCancelled, JobExpired, JobFailed
from mm.settings import Settings
from mm.settings import get as get_settings
from mm.workers import cancel_watch, control, intake, worker_state  # noqa: F401  (control registers the bind commands)
from mm.workers.inference import NotLoaded, build_result, call_with_retries

if TYPE_CHECKING:
    from billiard.einfo import ExceptionInfo
    from celery.backends.redis import RedisBackend
    from redis.typing import EncodableT, FieldT

log = logging.getLogger("mm.worker")
T = TypeVar("T")
REDIS_OUTAGE_S = 60.0  # a Redis restart with AOF, or a Sentinel failover, is over well within this
DUPLICATE_WAIT_S = 1.0  # a second delivery of a running job goes back to its queue after this


@functools.lru_cache(maxsize=4)
def _runtime(url: str, timeout: float) -> ollama.Client:
    return ollama.Client(host=url, timeout=timeout)


def _resident_entry(raw_state: bytes | None, model: str) -> dict[str, Any] | None:
    if not raw_state:
        return None
    return next((m for m in json.loads(raw_state)["resident"] if m["model"] == model), None)


def _fail(pipe: redis.client.Pipeline, job_id: str, reason: str, status: int | None = None) -> None:
    """Close the job's record as failed; ``status`` is the runtime's HTTP answer, for the gateway to repeat."""
    record: dict[FieldT, EncodableT] = {"status": "failed", "error": reason, "completed_at": time.time()}
    if status is not None:
        record["error_status"] = status
    pipe.hset(keys.job(job_id), mapping=record)


def _through_outage(call: Callable[[], T]) -> T:
    """``call()``, tried again while Redis restarts or fails over (up to REDIS_OUTAGE_S), so that a
    job meeting the outage at its start or end is neither failed nor left half-recorded."""
    deadline, pause = time.monotonic() + REDIS_OUTAGE_S, 0.1
    while True:
        try:
            return call()
        except redis.ConnectionError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("Redis unavailable (%s); trying again in %.1fs", exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, 2.0)


def _write(pipe: redis.client.Pipeline) -> None:
    """Execute the job's closing writes, through a Redis outage; one that Redis refuses is logged,
    never fails the job."""
    commands = list(pipe.command_stack)

    def execute() -> list[Any]:
        if not pipe.command_stack:  # a failed execute emptied the pipeline: queue the writes again
            for args, options in commands:
                pipe.pipeline_execute_command(*args, **options)
        return pipe.execute(raise_on_error=False)

    for reply in _through_outage(execute):
        if isinstance(reply, Exception):
            log.warning("job bookkeeping write refused: %s", reply)


class InferTask(Task):
    """The inference task's class: a job's closing writes wait until Celery stored its outcome."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                     einfo: ExceptionInfo | None) -> None:
        # Off the client's path: its result is out. Job.status() reads a stored outcome meanwhile.
        closing = getattr(self.request, "mm_closing", None)
        if closing is None:
            closing = store.connect().pipeline(transaction=False)
        if worker_state.current is not None:
            worker_state.current.job_ended(task_id, closing)
        _write(closing)


@task_postrun.connect
def _release_unstored(sender: Task[Any, Any] | None = None, task_id: str | None = None, **_: Any) -> None:
    """Release a job whose outcome Celery could not store (its Redis went away as the job ended).

    Celery then skips ``after_return``. Left counted, the job would look in flight forever and its
    message would never be requeued; released, the leader requeues it after ``MM_ORPHAN_GRACE_S``.
    """
    if getattr(sender, "name", None) != INFER_TASK or worker_state.current is None or task_id is None:
        return  # task_id: Celery always sends it
    if getattr(cast(Task, sender).request, "mm_duplicate", False):
        return  # a second delivery, put back: the job counted in flight is another delivery's
    release = store.connect().pipeline(transaction=False)
    if not worker_state.current.job_ended(task_id, release):
        return  # after_return closed it: the usual case
    log.warning("job %s: its outcome could not be stored; released for the leader to requeue", task_id)
    try:
        _write(release)
    except redis.ConnectionError as exc:  # the heartbeat prunes the id from the in-flight set later
        log.warning("job %s: release not written yet: %s", task_id, exc)


@dataclass(frozen=True)
class _Job:
    """One delivery of a job: what it asks, and the node and worker it runs on."""

    id: str
    model: str
    node: str
    worker: str
    request: dict[str, Any]
    submitted_at: float


class _Started(NamedTuple):
    """What the round trip that starts a job read."""

    at: float
    resident: dict[str, Any]  # the model's entry in this node's state
    runnable: bool  # the model is resident here and not being unloaded
    deliveries: int
    raw_entry: bytes | None  # the model's registry entry
    ended: str | None  # the record's status, if Celery holds the job's outcome already
    before: dict[str, str]  # the record's status, worker, node and started_at before this start


@app.task(name=INFER_TASK, bind=True, base=InferTask)
def infer(self: InferTask, request: dict[str, Any], submitted_at: float | None = None) -> dict[str, Any]:
    """Run one job on this node's runtime, if its model is resident here; else requeue it.

    ``request`` holds what :func:`mm.submit` takes (``model``, ``prompt`` or ``messages``, ``kind``,
    ``options``, ...). A job sent by plain Celery is validated and recorded first (``intake``).
    """
    settings = get_settings()
    r = store.connect()
    if intake.is_plain(self):
        request, submitted_at = _through_outage(lambda: intake.admit(self, request, r, settings))
    elif submitted_at is None:  # mm's header without its kwarg: the header holds the same submit time
        submitted_at = float(self.request.get("mm_submitted"))
    cancelled = _through_outage(lambda: cancel.requested(r, cast(str, self.request.id), request))
    me = worker_state.current
    if cancelled:
        _cancel(self, r, request, cancelled)
    job = _Job(cast(str, self.request.id), request["model"], me.node if me else settings.node,
               self.request.hostname or "", request, submitted_at)  # a running task has its id
    expired = deadlines.overdue(request, submitted_at, time.time())
    if expired:
        _expire(r, job, expired)
    if me is not None and not me.claim(job.model, job.id):
        _requeue_duplicate(self, job, me.hostname)
    started = _through_outage(lambda: _start(r, me, job, settings))
    if started.ended is not None:
        _ended_already(r, me, job, started.before | {"status": started.ended})
    if (runner := _running_elsewhere(r, job, started.before)) is not None:
        _undo_start(r, me, job, started.before)
        _requeue_duplicate(self, job, runner)
    if not started.runnable:
        _requeue_not_resident(r, me, job)
    done = r.pipeline(transaction=False)  # the job's outcome and bookkeeping, in one round trip
    if started.deliveries > settings.max_deliveries:
        _dead_letter(done, job, started.deliveries)
    try:
        response = _run(r, done, job, started, settings)
    except JobCancelled as exc:
        _cancel(self, r, request, replies.text(r.get(keys.cancel(job.id)) or str(exc)), me)
    except NotLoaded:  # the runtime restarted under the job: the scheduler loads the model again first
        _requeue_not_resident(r, me, job)
    result = _account(done, job, started, response)
    # Written by after_return, once Celery has stored the result (an attribute of mm's on this delivery).
    self.request.mm_closing = done  # type: ignore[attr-defined]
    return result


def _cancel(task: InferTask, r: redis.Redis, request: dict[str, Any], reason: str,
            me: worker_state.WorkerState | None = None) -> NoReturn:
    """End a cancelled job (before it ran, or stopped while running; its batch's, or its own cancel):
    ``cancelled``, REVOKED in Celery, a stream's reader told, its slot freed (``me``: it was started)."""
    job_id = cast(str, task.request.id)
    pipe = r.pipeline(transaction=False)
    cancel.record_cancelled(pipe, job_id, reason, request)
    if request.get("stream"):
        pipe.xadd(keys.job_stream(job_id), {"error": reason})
        pipe.expire(keys.job_stream(job_id), streams.STREAM_TTL_S)
    _write(pipe)
    task.backend.mark_as_revoked(job_id, reason, request=task.request, state=states.REVOKED)
    if me is not None:  # Celery skips after_return for an ignored task: the slot is freed here, once
        freed = r.pipeline(transaction=False)  # the outcome is stored (as after_return does it)
        if me.job_ended(job_id, freed):
            _write(freed)
    log.info("job %s: %s", job_id, reason)
    raise Ignore(reason)


def _expire(r: redis.Redis, job: _Job, why: str) -> NoReturn:
    """End a job taken past its deadline without running it: ``expired``, FAILURE in Celery
    (:class:`JobExpired`, so nothing runs it again), a stream's reader told."""
    pipe = r.pipeline(transaction=False)
    deadlines.record_expired(pipe, job.id, job.model, job.submitted_at, why, node=job.node, request=job.request)
    _write(pipe)
    if job.request.get("stream"):
        streams.publish_error(r, job.id, why)
    log.info("job %s: %s", job.id, why)
    raise JobExpired(why)


def _start(r: redis.Redis, me: worker_state.WorkerState | None, job: _Job, settings: Settings) -> _Started:
    """Count the job in flight, mark it running and read what running it needs."""
    # One round trip counts the job in flight, then reads all it needs. An unload sets its marker,
    # then reads what runs: in that order on both sides, either this read sees the marker or the
    # unload sees this job in flight and waits for it. In one MULTI, so that of two deliveries of
    # one job starting at once, the second reads the first's start (see _running_elsewhere).
    pipe = r.pipeline(transaction=True)
    if me is not None:
        me.job_started(job.model, job.id, pipe)
    pipe.get(keys.node_state(job.node))
    pipe.exists(keys.unloading(job.node, job.model))
    pipe.hincrby(keys.job(job.id), keys.DELIVERIES_FIELD, 1)
    pipe.hget(keys.MODELS, job.model)
    pipe.get(cast("RedisBackend", app.backend).get_key_for_task(job.id))  # an earlier delivery's outcome
    pipe.hmget(keys.job(job.id), *BEFORE_FIELDS)
    started = time.time()
    pipe.hset(keys.job(job.id), mapping={"status": "running", "started_at": started, "node": job.node,
                                         "worker": job.worker})
    pipe.expire(keys.job(job.id), settings.result_expires_s)
    raw_state, unloading, deliveries, raw_entry, meta, raw_before, _, _ = pipe.execute()[-8:]
    before = {f: replies.text(v) for f, v in zip(BEFORE_FIELDS, raw_before, strict=True) if v is not None}
    resident = _resident_entry(raw_state, job.model)
    ended = None
    if meta and json.loads(meta).get("status") in states.READY_STATES:
        ended = before.get("status", "complete")
    return _Started(started, resident or {}, resident is not None and not unloading, deliveries, raw_entry, ended,
                    before)


BEFORE_FIELDS = ("status", "worker", "node", "started_at")


def _running_elsewhere(r: redis.Redis, job: _Job, before: dict[str, str]) -> str | None:
    """The worker that runs this job now, if another one does: its record said so before this start
    and the job is in that worker's in-flight set (where it stays until its outcome is stored, or
    the leader requeues it after the worker died). A second delivery comes from a client that sent
    the same task id twice, or from a requeue that raced with the job's start."""
    runner = before.get("worker")
    if before.get("status") != "running" or not runner or runner == job.worker:
        return None
    return runner if r.sismember(keys.worker_inflight(runner), job.id) else None


def _undo_start(r: redis.Redis, me: worker_state.WorkerState | None, job: _Job, before: dict[str, str],
                uncount: bool = True) -> None:
    """Give the job's record back as it was ``before`` this start, unless someone wrote it since (the
    worker that runs it, storing its outcome); release the job here and, if ``uncount``, uncount
    this delivery."""
    key = keys.job(job.id)
    fields: dict[FieldT, EncodableT] = dict(before.items())

    def transaction(pipe: redis.client.Pipeline) -> None:
        status, worker = pipe.hmget(key, "status", "worker")
        pipe.multi()
        if uncount:
            pipe.hincrby(key, keys.DELIVERIES_FIELD, -1)
        if status == b"running" and replies.text(worker or b"") == job.worker:
            pipe.hset(key, mapping=fields)

    _through_outage(lambda: replies.transacted(r, transaction, key))
    if me is not None:
        release = r.pipeline(transaction=False)
        me.job_ended(job.id, release)
        _write(release)


def _requeue_duplicate(task: InferTask, job: _Job, runner: str) -> NoReturn:
    """Put back, after a pause, a delivery of a job that ``runner`` runs now: it is acked once the
    job's outcome is stored (_ended_already), or runs if the runner dies before that."""
    task.request.mm_duplicate = True  # type: ignore[attr-defined]  # the job in flight here is not this delivery's
    log.warning("job %s is running on %s; this second delivery goes back to the queue", job.id, runner)
    time.sleep(DUPLICATE_WAIT_S)
    raise Reject(f"job {job.id} is running on {runner}", requeue=True)


def _ended_already(r: redis.Redis, me: worker_state.WorkerState | None, job: _Job, before: dict[str, str]) -> NoReturn:
    """Ack, without running it again, a delivery of a job whose outcome Celery holds: its message came
    back (requeued while its worker was cut off from Redis, or a second delivery that waited for the
    first). The outcome stays; the record gets back what it said before this start."""
    _undo_start(r, me, job, before, uncount=False)
    log.warning("job %s ended already (%s): this delivery is acked without running it", job.id, before["status"])
    raise Ignore(f"job {job.id} ended already")


def _requeue_not_resident(r: redis.Redis, me: worker_state.WorkerState | None, job: _Job) -> NoReturn:
    """Undo the job's start and put it back on its queue: it never started, so it is no delivery."""
    undo = r.pipeline()
    undo.hincrby(keys.job(job.id), keys.DELIVERIES_FIELD, -1)
    undo.hset(keys.job(job.id), "status", "queued")
    if me is not None:
        me.job_ended(job.id, undo)
    _write(undo)  # through a Redis restart: a failed undo would fail the job
    # Never let the runtime load a model behind the scheduler's back: put the job back.
    log.warning("job %s: %s is not resident on %s; requeued", job.id, job.model, job.node)
    if me is not None and me.consumer is not None:
        control.unbind_self(me.consumer, job.model)
    time.sleep(0.2)  # the leader rebinds within a tick; do not spin on the queue meanwhile
    raise Reject(f"{job.model} not resident on {job.node}", requeue=True)


def _dead_letter(done: redis.client.Pipeline, job: _Job, deliveries: int) -> NoReturn:
    """Fail a job delivered too often without finishing, and keep it in the dead letters."""
    reason = f"dead-lettered after {deliveries - 1} deliveries without finishing (worker lost each time?)"
    done.rpush(keys.DEAD_LETTERS, json.dumps({"id": job.id, "model": job.model, "reason": reason,
                                              "at": time.time(), "request": job.request}))
    _fail(done, job.id, reason)
    batch_outcomes.note(done, job.request, job.id, "failed")
    metrics.add_job_sample(done, **metrics.job_sample(job.model, job.node, job.submitted_at, time.time(),
                                                      error="DeadLettered"))
    _write(done)
    raise JobFailed(reason)


def _publisher(r: redis.Redis, job_id: str, delivery: int) -> Callable[[dict[str, Any]], None]:
    """What publishes a streamed job's chunks, through a Redis restart (its reader waits it out too),
    each under its own stream id so that one sent again after it went through is not doubled."""
    sequence = itertools.count(1)

    def publish(chunk: dict[str, Any]) -> None:
        entry_id = f"{delivery}-{next(sequence)}"
        _through_outage(lambda: streams.publish(r, job_id, chunk, entry_id))

    return publish


def _not_restarted(r: redis.Redis, job_id: str) -> None:
    """Raise JobFailed if an earlier delivery of this streamed job sent chunks: its reader has them, and
    would read the answer twice over if it started again (as a runtime call is not retried once a
    chunk went out)."""
    sent = int(_through_outage(lambda: r.xlen(keys.job_stream(job_id))))
    if sent:
        raise JobFailed(f"stream interrupted: an earlier run sent {sent} chunks before its worker or runtime "
                        "was lost; a streamed answer is not started again, its reader would read it twice")


def _run(r: redis.Redis, done: redis.client.Pipeline, job: _Job, started: _Started,
         settings: Settings) -> dict[str, Any]:
    """Return the runtime's answer; if it fails, write the job's failure (and tell a stream) and raise."""
    entry = registry.decode(started.raw_entry) if started.raw_entry else None
    publish = _publisher(r, job.id, started.deliveries) if job.request.get("stream") else None
    watch = cancel_watch.watcher()
    try:
        if publish is not None and started.deliveries > 1:
            _not_restarted(r, job.id)
        return call_with_retries(
            _runtime(settings.runtime_url, settings.runtime_timeout_s), job.request,
            entry.load_options if entry else {}, settings, publish, watch.watch(job.id),
        )
    except JobCancelled:
        raise
    except JobFailed as exc:
        _fail(done, job.id, str(exc), exc.status)
        batch_outcomes.note(done, job.request, job.id, "failed")
        metrics.add_job_sample(done, **metrics.job_sample(job.model, job.node, job.submitted_at, started.at,
                                                          digest=started.resident.get("digest"),
                                                          error=type(exc.__context__ or exc).__name__))
        _write(done)
        if job.request.get("stream"):
            streams.publish_error(r, job.id, str(exc))
        raise
    finally:
        watch.unwatch(job.id)


def _account(done: redis.client.Pipeline, job: _Job, started: _Started, response: dict[str, Any]) -> dict[str, Any]:
    """Return the job's result, and queue into ``done`` its completion, the model's use and its sample."""
    resident = started.resident
    # The load this job waited for, if the model was loaded after it was submitted.
    load_s = resident.get("load_s", 0.0) if resident.get("loaded_at", 0) > job.submitted_at else 0.0
    result = build_result(response, job.request, job_id=job.id, node=job.node, worker=job.worker,
                          queue_wait_s=started.at - job.submitted_at, load_s=load_s)
    now = time.time()
    done.hset(keys.ACTIVITY, job.model, now)
    done.hset(keys.job(job.id), mapping={"status": "complete", "completed_at": now})
    batch_outcomes.note(done, job.request, job.id, "completed")
    metrics.add_job_sample(done, **metrics.job_sample(job.model, job.node, job.submitted_at, started.at,
                                                      digest=resident.get("digest"), timings=result["timings"]))
    if job.request.get("cache"):
        _cache(done, job, started, result)
    return result


def _cache(done: redis.client.Pipeline, job: _Job, started: _Started, result: dict[str, Any]) -> None:
    """Queue storing a cacheable job's result in the result cache, under the digest the registry gave
    its model when it started; not when the resident copy is another version (re-pulled meanwhile)."""
    entry = registry.decode(started.raw_entry) if started.raw_entry else None
    resident_digest = started.resident.get("digest")
    if entry is None or (resident_digest and resident_digest != entry.digest):
        return
    key = result_cache.entry_key(job.request, entry)
    if key is not None:
        result_cache.put(done, key, result, get_settings())
