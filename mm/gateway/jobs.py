"""Job manager API: POST /api/submit, GET and DELETE /api/job/<id>, GET /api/stats, GET /api/health;
plus GET /api/jobs (recent jobs) and GET /api/rollups (charts) for the status page."""

from __future__ import annotations

import functools
import json
import re
import time
from typing import Any, cast

import redis
from celery.result import AsyncResult

from mm import cancel, client, keys, metrics, replies
from mm.app import app
from mm.gateway import status
from mm.gateway.base import ApiError, BaseHandler, Gateway
from mm.gateway.ollama_shape import CACHE_HEADER, cache_from
from mm.gateway.queued_limit import within_limit
from mm.rollup import RESOLUTIONS

SUBMIT_FIELDS = ("model", "prompt", "messages", "kind", "priority", "options", "images", "metadata", "format",
                 "system", "deadline_s")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
CANCEL_WAIT_S = 3.0  # how long DELETE /api/job/<id> waits for a running job to stop
STATS_CACHE_S = 1.0  # /api/stats is polled by every open status page: one Redis pass per second


def submit_kwargs(body: dict[str, Any], allowed: tuple[str, ...] = SUBMIT_FIELDS) -> dict[str, Any]:
    """``mm.submit`` arguments from a request body; an unknown field is a 400 naming it."""
    for name in body:
        if name not in allowed:
            raise ApiError(400, name, f"unknown field (known: {', '.join(allowed)})")
    kwargs = {k: body[k] for k in allowed if k in body and body[k] is not None}
    if "model" not in kwargs:
        raise ApiError(400, "model", "is required")
    if not isinstance(kwargs["model"], str) or not kwargs["model"].strip():
        raise ApiError(400, "model", "must be a non-empty string")
    return kwargs


def submit(kwargs: dict[str, Any]) -> client.Job:
    kwargs = dict(kwargs)
    model = kwargs.pop("model")
    prompt = kwargs.pop("prompt", None)
    return client.submit(model, prompt, **kwargs)


class SubmitHandler(BaseHandler):
    async def post(self) -> None:
        kwargs = submit_kwargs(self.json_body())
        cache = cache_from(self.request.headers.get(CACHE_HEADER))
        if cache is not None:
            kwargs["cache"] = cache
        job = await within_limit(self, functools.partial(submit, kwargs))
        self.send_json({"job_id": job.id, "status": "submitted", "model": kwargs["model"],
                        "priority": kwargs.get("priority", "normal")})


def _result_text(result: dict[str, Any]) -> Any:
    if "response" in result:
        return result["response"]
    if "message" in result:
        return (result["message"] or {}).get("content", "")
    return result.get("embeddings")


def job_view(job_id: str) -> dict[str, Any] | None:
    """The job manager API's job status: status, model, result when complete, error when failed, times."""
    record = client.Job(job_id).record()
    if not record:
        return None
    state = record.get("status", "pending")
    view: dict[str, Any] = {
        "job_id": job_id, "status": state, "model": record.get("model"), "kind": record.get("kind"),
        "priority": record.get("priority"),
        "submitted_at": status.iso(float(record["submitted_at"])) if record.get("submitted_at") else None,
        "started_at": status.iso(float(record["started_at"])) if record.get("started_at") else None,
        "completed_at": status.iso(float(record["completed_at"])) if record.get("completed_at") else None,
        "node": record.get("node"), "worker": record.get("worker"),
    }
    if record.get("metadata"):
        try:
            view["metadata"] = json.loads(record["metadata"])
        except ValueError:
            view["metadata"] = record["metadata"]
    if state == "complete":
        result: AsyncResult[Any] = AsyncResult(job_id, app=app)
        if not result.successful():  # the record is written just before the result: not there yet
            view["status"] = "running"
        else:
            output = cast("dict[str, Any]", result.result)  # a successful job's
            view["result"] = _result_text(output)
            view["timings"] = output.get("timings")
            view["output"] = output
    elif state in ("cancelled", "expired"):
        view["error"] = record.get("error") or state
    elif state == "failed":
        view["error"] = record.get("error") or "failed"
        if record.get("error_status"):  # the runtime refused the job with this HTTP status
            view["error_status"] = int(record["error_status"])
    return view


def cancel_job(r: redis.Redis, job_id: str, expires_s: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``DELETE /api/job/<id>``: 200 and the job, cancelled; 202 if a worker
    is still stopping it after CANCEL_WAIT_S; 409 if it had ended, or ended on its own meanwhile
    (nothing changed); 404 if unknown."""
    outcome = cancel.cancel(r, job_id, "cancelled: DELETE /api/job through the gateway", expires_s)
    if outcome.result == "unknown":
        raise ApiError(404, "job_id", f"no job {job_id} (unknown, or expired after MM_RESULT_EXPIRES_S)")
    if outcome.result == "ended":
        raise ApiError(409, "job_id", f"job {job_id} has ended ({outcome.status}); nothing was cancelled")
    if outcome.result == "stopping" and cancel.wait_ended(r, job_id, CANCEL_WAIT_S) in ("complete", "failed"):
        raise ApiError(409, "job_id", f"job {job_id} ended on its own while being stopped; nothing was cancelled")
    view = job_view(job_id) or {"job_id": job_id, "status": "cancelled"}
    return (200 if view["status"] == "cancelled" else 202), view


class JobHandler(BaseHandler):
    async def get(self, job_id: str) -> None:
        check_job_id(job_id)
        view = await self.run(job_view, job_id)
        if view is None:
            raise ApiError(404, "job_id", f"no job {job_id} (unknown, or expired after MM_RESULT_EXPIRES_S)")
        self.send_json(view)

    async def delete(self, job_id: str) -> None:
        """Cancel the job: a queued one never runs, a running one is stopped."""
        check_job_id(job_id)
        code, view = await self.run(cancel_job, self.gw.r, job_id, self.gw.settings.result_expires_s)
        self.send_json(view, code)


def check_job_id(job_id: str) -> None:
    if not JOB_ID_RE.match(job_id):
        raise ApiError(400, "job_id", "must be 1-200 letters, digits or _.:-")


class StatsHandler(BaseHandler):
    async def get(self) -> None:
        cache = self.gw.extras.setdefault("stats_cache", {"at": 0.0, "value": None})
        if cache["value"] is None or time.monotonic() - cache["at"] > STATS_CACHE_S:
            cache["value"] = await self.run(status.stats, self.gw.r, self.gw.settings)
            cache["at"] = time.monotonic()
        self.send_json(cache["value"])


def health(r: redis.Redis) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 while Redis answers, with what is (not) running; 503 without Redis."""
    try:
        r.ping()
        lead = status.leader(r)
        node_count = r.zcard(keys.NODES)
        live_nodes = sum(1 for name in replies.members(r.zrange(keys.NODES, 0, -1))
                         if r.exists(keys.node_state(name.decode())))
        workers = sum(1 for w in r.smembers(keys.WORKERS) if r.exists(keys.worker_state(replies.text(w))))
        models = r.hlen(keys.MODELS)
    except redis.RedisError as exc:
        return 503, {"status": "unavailable", "redis": f"error: {exc}"}
    problems = []
    if not lead["owner"]:
        problems.append("no leader holds the broker lease")
    if not live_nodes:
        problems.append("no node publishes its state")
    if not workers:
        problems.append("no model-worker is running")
    return 200, {"status": "degraded" if problems else "ok", "problems": problems, "redis": "ok",
                 "leader": lead["owner"], "nodes": live_nodes, "nodes_known": node_count, "workers": workers,
                 "models": models, "at": status.iso(time.time())}


class HealthHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        code, body = await self.run(health, self.gw.r)
        self.send_json(body, code)


class RecentJobsHandler(BaseHandler):
    async def get(self) -> None:
        n = int(self.query_number("n", 20, minimum=1, maximum=500, integer=True))
        self.send_json(await self.run(status.recent_jobs, self.gw.r, n))


class RollupsHandler(BaseHandler):
    async def get(self) -> None:
        resolution = self.get_query_argument("resolution", "minute")
        if resolution not in RESOLUTIONS:
            raise ApiError(400, "resolution", f"must be one of {', '.join(RESOLUTIONS)}, not {resolution!r:.40}")
        span = self.query_number("span_s", 3600.0 if resolution == "minute" else 86_400.0, minimum=60,
                                 maximum=31 * 86_400)
        if resolution == "minute":
            span = min(span, self.gw.settings.metrics_minute_retention_s)
        model = self.get_query_argument("model", None) or None
        if (model is not None and not await self.run(self.gw.r.hexists, keys.MODELS, model)
                and model not in await self.run(metrics.models, self.gw.r)):
            raise ApiError(404, "model", f"unknown model {model!r:.80}")
        self.send_json(await self.run(status.rollups, self.gw.r, resolution, span, None, model))


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/api/submit", SubmitHandler, args),
        (r"/api/job/([^/]+)", JobHandler, args),
        (r"/api/stats", StatsHandler, args),
        (r"/api/health", HealthHandler, args),
        (r"/api/jobs", RecentJobsHandler, args),
        (r"/api/rollups", RollupsHandler, args),
    ]

