"""The client API other projects import: submit jobs, follow them, get their results.

Only this module, the Celery app (a leaf) and Redis are needed; no worker code is imported.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from celery.result import AsyncResult

from mm import keys, registry, store
from mm.app import INFER_TASK, app
from mm.errors import JobFailed
from mm.settings import get as get_settings
from mm.validation import JobRequest, validate

STATUSES = ("pending", "queued", "running", "complete", "failed")


class Job:
    """A handle on one submitted job."""

    def __init__(self, job_id: str):
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def record(self) -> dict[str, Any]:
        """The job's record: model, priority, status, timestamps, node, error."""
        raw = store.connect().hgetall(keys.job(self.id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def status(self) -> str:
        """pending, queued, running, complete or failed."""
        status = store.connect().hget(keys.job(self.id), "status")
        return status.decode() if status else "pending"

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job and return its output with timings; raise :class:`JobFailed` on failure.

        Raises ``TimeoutError`` if it has not ended within ``timeout`` seconds.
        """
        result = AsyncResult(self.id, app=app)
        try:
            value = result.get(timeout=timeout, propagate=False, interval=0.05)
        except Exception as exc:  # celery.exceptions.TimeoutError is not a builtin TimeoutError
            if type(exc).__name__ == "TimeoutError":
                raise TimeoutError(f"job {self.id} did not end within {timeout}s (status {self.status()})") from None
            raise
        if result.successful():
            return value
        reason = self.record().get("error") or f"{type(value).__name__}: {value}"
        raise JobFailed(reason)


def _enqueue(request: JobRequest, job_id: str | None = None) -> Job:
    r = store.connect()
    job_id = job_id or str(uuid.uuid4())
    now = time.time()
    settings = get_settings()
    record = {
        "id": job_id, "model": request.model, "kind": request.kind, "priority": request.priority,
        "status": "queued", "submitted_at": now, "metadata": json.dumps(request.metadata),
    }
    # The record is written first so a fast worker's "running" is never overwritten by "queued".
    pipe = r.pipeline()
    pipe.hset(keys.job(job_id), mapping=record)
    pipe.expire(keys.job(job_id), settings.result_expires_s)
    pipe.execute()
    try:
        app.send_task(
            INFER_TASK,
            kwargs={"request": request.payload(), "submitted_at": now},
            task_id=job_id,
            queue=keys.model_queue(request.model),
            priority=keys.PRIORITIES[request.priority],
            headers={"mm_submitted": now},
        )
    except Exception as exc:
        r.hset(keys.job(job_id), mapping={"status": "failed", "error": f"enqueue failed: {exc}"})
        raise
    r.lpush(keys.WAKE, 1)
    return Job(job_id)


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

    Raises:
        ValidationError: nothing was enqueued; ``.field`` names the bad input.
    """
    request = validate(
        model, known_models=registry.names(store.connect()), settings=get_settings(), prompt=prompt,
        messages=messages, kind=kind, priority=priority, options=options, images=images,
        metadata=metadata, format=format, system=system,
    )
    return _enqueue(request)


def generate(model: str, prompt: str, *, timeout: float | None = 600, **kwargs: Any) -> dict[str, Any]:
    """Submit a generate job and wait for its result (see :func:`submit` for arguments)."""
    return submit(model, prompt, **kwargs).get(timeout=timeout)
