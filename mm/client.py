"""The client API other projects import: submit jobs, follow them, get their results.

Only this module, the Celery app (a leaf) and Redis are needed; no worker code is imported.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import redis
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from mm import cancel, deadlines, keys, redis_memory, registry, replies, result_cache, store, streams
from mm.app import INFER_TASK, app
from mm.errors import JobCancelled, JobExpired, JobFailed, JobLost, UnknownJob
from mm.settings import get as get_settings
from mm.validation import JobRequest, ModelFacts, validate

if TYPE_CHECKING:
    from celery.backends.redis import RedisBackend
    from redis.typing import EncodableT, FieldT

STATUSES = ("pending", "queued", "running", "complete", "failed", "cancelled", "expired")
KNOWN_MODELS_TTL_S = 5.0  # a removed model is refused at most this long after it left every runtime
LOST_CHECK_S = 1.0  # how often a waiting client checks that its job still exists


class Job:
    """A handle on one submitted job."""

    def __init__(self, job_id: str, result: AsyncResult | None = None, warnings: tuple[str, ...] = ()):
        self.id = job_id
        self._result = result
        self.warnings = warnings  # what validation accepted but the job will not do as asked

    def _celery_result(self) -> AsyncResult:
        # send_task's result is subscribed already: use it once. A fresh one afterwards, since a
        # ready AsyncResult caches its state and the job may have been retried since.
        result, self._result = self._result, None
        return result or AsyncResult(self.id, app=app)

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def record(self) -> dict[str, Any]:
        """The job's record: model, priority, status, timestamps, node, error."""
        raw = store.connect().hgetall(keys.job(self.id))
        record = {replies.text(k): replies.text(v) for k, v in raw.items()}
        if record:
            status, completed_at = self._settled(record.get("status", "pending"))
            record["status"] = status
            if completed_at is not None:
                record.setdefault("completed_at", str(completed_at))
        return record

    def status(self) -> str:
        """pending, queued, running, complete, failed, cancelled or expired (not started by its deadline)."""
        status = store.connect().hget(keys.job(self.id), "status")
        return self._settled(replies.text(status) if status else "pending")[0]

    def _settled(self, status: str) -> tuple[str, float | None]:
        # A worker closes the record just after Celery stored the outcome: the outcome wins.
        if status in ("queued", "running"):
            result: AsyncResult[Any] = AsyncResult(self.id, app=app)
            settled = {"SUCCESS": "complete", "FAILURE": "failed", "REVOKED": "cancelled"}.get(result.state)
            if settled:
                return settled, result.date_done.timestamp() if result.date_done else None
        return status, None

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job and return its output with timings.

        Raises:
            JobFailed: the job ended FAILED (the message is the reason; ``.status`` the runtime's
                HTTP status when the runtime refused it); :class:`JobCancelled` (a JobFailed whose
                message is ``cancelled: <why>``) if it was cancelled; :class:`JobExpired` (a JobFailed
                whose message is ``expired: <why>``) if it was not started within its ``deadline_s``.
            JobLost: its record vanished from Redis (e.g. Redis restarted without persistence).
            TimeoutError: it has not ended within ``timeout`` seconds.
        """
        result = self._celery_result()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = LOST_CHECK_S if deadline is None else min(LOST_CHECK_S, deadline - time.monotonic())
                try:
                    value = result.get(timeout=max(left, 0.001), propagate=False, interval=0.05)
                    break
                except CeleryTimeout:
                    pass
                except redis.ConnectionError:  # Redis restarting: keep waiting until the deadline
                    time.sleep(min(0.5, max(left, 0.001)))
                if deadline is not None and timeout is not None and time.monotonic() >= deadline:
                    raise TimeoutError(self._not_ended(timeout))
                self._check_not_lost(result)
        finally:
            _unsubscribe(result)
        if result.successful():
            return value
        raise self._failure(f"{type(value).__name__}: {value}")

    def _failure(self, default: str) -> JobFailed:
        """The job's failure: its reason and the runtime's HTTP status, from its record."""
        record = self.record()
        if record.get("status") == "cancelled":
            return JobCancelled(record.get("error") or "cancelled")
        if record.get("status") == "expired":
            return JobExpired(record.get("error") or "expired")
        status = record.get("error_status")
        return JobFailed(record.get("error") or default, status=int(status) if status else None)

    def stream(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the job's chunks as the worker produces them (submit with ``stream=True``).

        Each chunk is what one line of Ollama's NDJSON stream holds; the last has ``done: true``
        and the durations. Raises :class:`JobFailed` (or ``TimeoutError``) like :meth:`get`, and
        like it waits through a Redis restart or failover (until ``timeout``).
        """
        r = store.connect()
        result = self._celery_result()
        deadline = None if timeout is None else time.monotonic() + timeout
        after = "0-0"
        try:
            while True:
                block_ms = int(1000 * (LOST_CHECK_S if deadline is None else
                                       max(0.001, min(LOST_CHECK_S, deadline - time.monotonic()))))
                try:
                    entries = list(streams.read(r, self.id, after, block_ms))
                    ended = not entries and self._ended_unstreamed(result)
                except redis.ConnectionError:  # Redis restarting: keep waiting until the deadline
                    entries, ended = [], False
                    time.sleep(min(0.5, block_ms / 1000))
                for entry_id, entry in entries:
                    after = entry_id  # the next read continues after it
                    if "error" in entry:
                        raise self._failure(entry["error"])
                    yield entry["chunk"]
                    if entry["chunk"].get("done"):
                        return
                if ended:
                    return  # it ended without streaming (submitted with stream=False)
                if not entries and deadline is not None and timeout is not None and time.monotonic() >= deadline:
                    raise TimeoutError(self._not_ended(timeout))
        finally:
            _unsubscribe(result)

    def _ended_unstreamed(self, result: AsyncResult) -> bool:
        """True if the job succeeded with no chunk left to read; raises its failure if it failed."""
        if result.state in ("FAILURE", "REVOKED") or self.status() in ("failed", "cancelled", "expired"):
            raise self._failure("failed")
        if result.state == "SUCCESS":
            return True
        self._check_not_lost(result)
        return False

    def cancel(self, reason: str = "cancelled by request", wait: float = 5.0) -> bool:
        """Cancel the job: a queued one is taken off its queue and never runs; a running one is
        stopped (its runtime call closed) and its worker slot freed. Either ends ``cancelled``, and
        :meth:`get` then raises :class:`JobCancelled`.

        Args:
            reason: why, kept in the job's record as ``cancelled: <reason>``.
            wait: seconds to wait for a running job to stop (0: return at once).

        Returns:
            True if the job is cancelled (or being stopped, if it had not stopped within ``wait``);
            False if it had ended already (complete, failed or cancelled), or ended on its own while
            being stopped (an embedding is not stopped mid-call): nothing changed.

        Raises:
            UnknownJob: no job has this id (or its record expired).
        """
        r = store.connect()
        why = reason if reason.startswith("cancelled:") else f"cancelled: {reason}"
        outcome = cancel.cancel(r, self.id, why, get_settings().result_expires_s)
        if outcome.result == "unknown":
            raise UnknownJob(f"no job {self.id} (unknown, or expired after MM_RESULT_EXPIRES_S)")
        if outcome.result == "stopping" and wait > 0:
            # An embedding (or a job about to finish) may end on its own meanwhile: then nothing changed.
            return cancel.wait_ended(r, self.id, wait) not in ("complete", "failed")
        return outcome.result != "ended"

    def _not_ended(self, timeout: float) -> str:
        return f"job {self.id} did not end within {timeout:.1f} s (status {self.status()})"

    def _check_not_lost(self, result: AsyncResult) -> None:
        try:
            if store.connect().exists(keys.job(self.id)) or result.state != "PENDING":
                return
        except redis.ConnectionError:
            return
        raise JobLost(f"job {self.id} was lost: Redis no longer has it (restarted without persistence?); "
                      "submit it again")


def _unsubscribe(result: AsyncResult) -> None:
    """Stop listening for ``result``'s outcome once nothing waits for it any more.

    Celery subscribes to a result's channel on send and on ``get``, and unsubscribes only when
    the outcome arrives or the AsyncResult is collected; collected at interpreter exit, the
    unsubscribe may need a new connection and fails there ("Exception ignored in
    AsyncResult.__del__"). A later ``get`` subscribes again.
    """
    try:
        cast("RedisBackend", result.backend).remove_pending_result(result)  # mm's result backend
    except redis.ConnectionError:
        pass  # the subscription went with the connection


_known: tuple[float, frozenset[str]] = (0.0, frozenset())
_facts: dict[str, tuple[float, ModelFacts | None]] = {}


def _known_models(model: str) -> frozenset[str]:
    """Registered model names, cached for KNOWN_MODELS_TTL_S; a miss re-reads them at once."""
    global _known
    fetched_at, names = _known
    if not isinstance(model, str):
        return names  # validation names the bad model field
    if model not in names or time.monotonic() - fetched_at > KNOWN_MODELS_TTL_S:
        _known = (time.monotonic(), registry.names(store.connect()))
    return _known[1]


def _model_facts(model: Any) -> ModelFacts | None:
    """What the registry knows of ``model`` (context, capabilities, ceiling), cached for KNOWN_MODELS_TTL_S."""
    if not isinstance(model, str):
        return None
    fetched_at, facts = _facts.get(model, (0.0, None))
    if time.monotonic() - fetched_at > KNOWN_MODELS_TTL_S:
        entry = registry.get(store.connect(), model)
        facts = entry.facts() if entry else None
        if len(_facts) > 4096:  # a client naming ever new models must not grow this forever
            _facts.clear()
        _facts[model] = (time.monotonic(), facts)
    return facts


def send(request: JobRequest, job_id: str, submitted_at: float) -> AsyncResult:
    """Send a validated job to its model's queue at its priority, marked as admitted by mm."""
    return app.send_task(
        INFER_TASK,
        kwargs={"request": request.payload(), "submitted_at": submitted_at},
        task_id=job_id,
        queue=keys.model_queue(request.model),
        priority=keys.PRIORITIES[request.priority],
        headers={"mm_submitted": submitted_at},
    )


def _enqueue(request: JobRequest, job_id: str | None = None) -> Job:
    r = store.connect()
    redis_memory.check(r, get_settings())  # refused whole, before anything is written
    if job_id is not None:
        r.delete(keys.job(job_id))  # a retry: its old record must not hold a final status
    job_id = job_id or str(uuid.uuid4())
    now = time.time()
    record: dict[FieldT, EncodableT] = {
        "id": job_id, "model": request.model, "kind": request.kind, "priority": request.priority,
        "submitted_at": now, "metadata": json.dumps(request.metadata),
    }
    expires_s = get_settings().result_expires_s
    try:
        result = send(request, job_id, now)
    except Exception as exc:
        failed = r.pipeline()
        failed.hset(keys.job(job_id), mapping={**record, "status": "failed", "error": f"enqueue failed: {exc}"})
        failed.expire(keys.job(job_id), expires_s)
        failed.execute()

        raise
    # Written after the send, in the same round trip as the leader's wake-up; a worker may have
    # started the job already, so the status is set only if it has none yet.
    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.job(job_id), mapping=record)
    pipe.hsetnx(keys.job(job_id), "status", "queued")
    pipe.expire(keys.job(job_id), expires_s)
    deadlines.note(pipe, job_id, now, request.deadline_s)
    pipe.lpush(keys.WAKE, 1)
    pipe.execute()
    return Job(job_id, result, request.warnings)


def _from_cache(request: JobRequest) -> Job | None:
    """The job answered from the result cache, complete already; None on a miss or when not cacheable.

    Its record is complete, Celery holds its result as SUCCESS and a streaming request finds the
    answer's chunks in its stream, so every reader sees a finished job; nothing is enqueued.
    """
    r = store.connect()
    _key, cached = result_cache.lookup(r, request.payload())
    if cached is None:
        return None
    job_id, now = str(uuid.uuid4()), time.time()
    result = result_cache.served(cached, job_id, request.warnings)
    if request.stream:
        streams.publish_all(r, job_id, result_cache.chunks(result))
    app.backend.store_result(job_id, result, states.SUCCESS)
    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.job(job_id), mapping={
        "id": job_id, "model": request.model, "kind": request.kind, "priority": request.priority,
        "submitted_at": now, "started_at": now, "completed_at": now, "metadata": json.dumps(request.metadata),
        "status": "complete", "cached": 1,
    })
    pipe.expire(keys.job(job_id), get_settings().result_expires_s)
    pipe.execute()
    return Job(job_id, None, request.warnings)


def enqueue(request: JobRequest, job_id: str) -> None:
    """Enqueue an already validated job under ``job_id``, without following its result.

    For jobs whose outcome is read later from Redis (the Batch API); a record left under
    ``job_id`` by an earlier attempt is replaced.
    """
    job = _enqueue(request, job_id)
    if job._result is not None:
        _unsubscribe(job._result)


def submit(
    model: str,
    prompt: str | list[str] | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    kind: str = "generate",
    priority: str = "normal",
    options: dict[str, Any] | None = None,
    images: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    format: str | dict[str, Any] | None = None,
    system: str | None = None,
    stream: bool = False,
    tools: list[dict[str, Any]] | None = None,
    think: bool | str | None = None,
    raw: bool | None = None, template: str | None = None, suffix: str | None = None, context: list[int] | None = None,
    logprobs: bool | None = None, top_logprobs: int | None = None,
    dimensions: int | None = None, truncate: bool | None = None,
    cache: bool | None = None,
    deadline_s: float | None = None,
) -> Job:
    """Validate a job and enqueue it on ``mm.model.<model>``; return its :class:`Job` handle.

    Args:
        model: a model some runtime lists in ``/api/tags`` (e.g. ``"gemma3:270m"``).
        prompt: the prompt (generate), or a string or list of strings (embed).
        messages: chat messages, ``[{"role": "user", "content": "..."}]`` (chat).
        kind: ``"generate"``, ``"chat"`` or ``"embed"``.
        priority: ``"high"``, ``"normal"`` or ``"low"``.
        options: Ollama options (num_predict, temperature, seed, stop, ...).
        images: base64-encoded images for vision models.
        metadata: any JSON object, kept with the job.
        stream: publish tokens as they come; read them with :meth:`Job.stream`.
        tools, think, raw, template, suffix, context, logprobs, top_logprobs, dimensions, truncate:
            passed to the runtime as Ollama's API defines them (tools for chat; raw, template,
            suffix and context for generate; dimensions for embed). ``truncate=False`` refuses a
            prompt longer than the model's context instead of keeping its end.
        cache: answer a deterministic request (temperature 0 or a fixed seed, or an embedding) from
            the result cache when an identical one ran before, and store its result when it runs
            (None: ``MM_CACHE_DEFAULT``). A cached result's ``timings`` say ``cached: True``.
        deadline_s: seconds after submission by which the job must have started; a job not started
            by then ends ``expired`` and never runs (:meth:`Job.get` raises :class:`JobExpired`).

    Raises:
        ValidationError: nothing was enqueued; ``.field`` names the bad input.
    """
    request = validate(
        model, known_models=_known_models(model), settings=get_settings(), prompt=prompt,
        messages=messages, kind=kind, priority=priority, options=options, images=images,
        metadata=metadata, format=format, system=system, stream=stream, facts=_model_facts(model),
        tools=tools, think=think, raw=raw, template=template, suffix=suffix, context=context,
        logprobs=logprobs, top_logprobs=top_logprobs, dimensions=dimensions, truncate=truncate, cache=cache,
        deadline_s=deadline_s,
    )
    if request.cache:
        hit = _from_cache(request)
        if hit is not None:
            return hit
    return _enqueue(request)


def generate(model: str, prompt: str, *, timeout: float | None = 600, **kwargs: Any) -> dict[str, Any]:
    """Submit a generate job and wait for its result (see :func:`submit` for arguments)."""
    return submit(model, prompt, **kwargs).get(timeout=timeout)
