"""Model control (on-demand inference: start, stop, infer), through the broker's policy:

- ``GET /api/models`` and ``GET /api/models/<name>``: registry entries with residency and demand.
- ``POST /api/models/<name>/start``: pin the model (the policy never evicts a pinned model) and,
  if it is not resident, submit a one-token warm-up job so the policy loads it like any demanded
  model. ``?wait=S`` waits up to S seconds for it to be resident.
- ``POST /api/models/<name>/stop``: unpin it and ask the leader, through its fenced path
  (``mm:unload:requests``), to unload it everywhere; refused (409) while jobs are queued or running.
- ``POST /api/models/<name>/infer``: submit a job and wait for its result.
- ``PATCH /api/models/<name>``: set ``pinned`` and ``max_parallel``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from mm import activity, cancel, client, events, keys, registry
from mm.errors import JobFailed, JobLost
from mm.gateway import status
from mm.gateway.base import ApiError, BaseHandler, Gateway
from mm.gateway.jobs import _result_text, submit, submit_kwargs
from mm.gateway.ollama_shape import PRIORITY_HEADER, priority_from
from mm.gateway.queued_limit import within_limit
from mm.gateway.waiting import wait_result
from mm.scheduling.reader import read_records
from mm.settings import Settings

INFER_FIELDS = ("prompt", "messages", "kind", "priority", "options", "images", "metadata", "format", "system",
                "deadline_s", "timeout")
MAX_WAIT_S = 600.0
MAX_NUM_PREDICT = 1_000_000  # a per-model num_predict ceiling above this is a typo, not a model
SHOW_TIMEOUT_S = 3.0


def model_views(r: redis.Redis, settings: Settings, only: str | None = None) -> list[dict[str, Any]]:
    """Registry entries joined with activity, residency and operations under way."""
    entries = registry.all_models(r)
    acts = {m.model: m for m in activity.activity(r, settings)}
    ops: dict[str, list[str]] = {}
    for state in read_records(r).nodes.values():
        for model, op in (state.get("ops") or {}).items():
            if op.get("state") == "running":
                ops.setdefault(model, []).append(op.get("op", ""))
    views = []
    for name in sorted(entries if only is None else [only]):
        entry = entries.get(name)
        if entry is None:
            continue
        act = acts.get(name)
        resident_on = act.resident_on if act else []
        running_ops = ops.get(name, [])
        run_state = ("loading" if "load" in running_ops else "unloading" if "unload" in running_ops
                     else "running" if resident_on else "stopped")
        views.append({
            "name": name, "status": run_state, "resident_on": resident_on, "size": entry.size,
            "tag_size": entry.tag_size, "learned_size": entry.learned_size, "digest": entry.digest,
            "details": entry.details, "num_ctx": entry.num_ctx, "max_parallel": entry.max_parallel,
            "context_length": entry.context_length, "capabilities": entry.capabilities,
            "max_num_predict": entry.max_num_predict or settings.max_num_predict,
            "pinned": entry.pinned or name in settings.pinned,
            "pinned_by": "MM_PINNED_MODELS" if name in settings.pinned else ("api" if entry.pinned else None),
            "warm": bool(act and act.warm), "nodes": entry.nodes,
            "queued": act.queued if act else 0, "in_flight": act.in_flight if act else 0,
            "last_used_at": status.iso(act.last_used) if act else None, "active": bool(act and act.active),
            "idle": bool(act.idle) if act else True,
        })
    return views


def one_model(r: redis.Redis, settings: Settings, name: str) -> dict[str, Any]:
    views = model_views(r, settings, only=name)
    if not views:
        raise ApiError(404, "model", f"unknown model {name!r:.120}: no runtime lists it in /api/tags")
    return views[0]


def set_pinned(r: redis.Redis, name: str, pinned: bool, by: str) -> None:
    entry = registry.get(r, name)
    if entry is None:
        raise ApiError(404, "model", f"unknown model {name!r:.120}")
    if entry.pinned != pinned:
        registry.set_flags(r, name, pinned=pinned)
        events.emit(r, "pin", model=name, pinned=pinned, by=by)
        r.lpush(keys.WAKE, 1)


def warmup_kind(r: redis.Redis, name: str) -> str:
    """``embed`` for an embedding-only model (its runtime's /api/show says so), else ``generate``."""
    entry = registry.get(r, name)
    for node in entry.nodes if entry else []:
        raw = r.get(keys.node_state(node))
        if not raw:
            continue
        url = json.loads(raw).get("runtime_url")
        if not url:
            continue
        try:
            reply = httpx.post(f"{url}/api/show", json={"model": name}, timeout=SHOW_TIMEOUT_S)
            capabilities = reply.json().get("capabilities") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
        if "embedding" in capabilities and "completion" not in capabilities:
            return "embed"
        return "generate"
    return "generate"


def start(r: redis.Redis, settings: Settings, name: str, pin: bool) -> dict[str, Any]:
    view = one_model(r, settings, name)
    if pin:
        set_pinned(r, name, True, "gateway start")
    job_id = None
    if view["status"] == "stopped" and not view["queued"]:
        kind = warmup_kind(r, name)
        job = client.submit(name, "Hello" if kind == "generate" else "warm-up", kind=kind, priority="high",
                            options={"num_predict": 1} if kind == "generate" else None,
                            metadata={"via": "gateway", "purpose": "start"})
        job_id = job.id
    return {"job_id": job_id} | one_model(r, settings, name)


def stop(r: redis.Redis, settings: Settings, name: str) -> dict[str, Any]:
    view = one_model(r, settings, name)
    if name in settings.pinned:
        raise ApiError(409, "model", f"{name} is pinned by MM_PINNED_MODELS; remove it there to stop it")
    if view["queued"] or view["in_flight"]:
        raise ApiError(409, "model", f"{name} has {view['queued']} jobs queued and {view['in_flight']} running; "
                                     "stop it once they are done")
    set_pinned(r, name, False, "gateway stop")
    requested = []
    for node in view["resident_on"]:
        r.hset(keys.UNLOAD_REQUESTS, f"{node}|{name}", "stop requested through the gateway")
        requested.append(node)
    if requested:
        r.lpush(keys.WAKE, 1)
    return {"unload_requested_on": requested} | one_model(r, settings, name)


async def wait_until(handler: BaseHandler, check: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if await handler.run(check):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


class ModelsHandler(BaseHandler):
    async def get(self) -> None:
        models = await self.run(model_views, self.gw.r, self.gw.settings)
        self.send_json({"models": models, "count": len(models)})


class ModelHandler(BaseHandler):
    async def get(self, name: str) -> None:
        self.send_json(await self.run(one_model, self.gw.r, self.gw.settings, name))

    async def patch(self, name: str) -> None:
        body = self.json_body()
        if not body:
            raise ApiError(400, "body", "nothing to change: send pinned, max_parallel and/or max_num_predict")
        for field in body:
            if field == "warm":
                raise ApiError(400, "warm", "the warm pool is MM_WARM_POOL and cannot be changed at run time; "
                                            "pin the model, or POST /api/models/<name>/start to load it")
            if field not in ("pinned", "max_parallel", "max_num_predict"):
                raise ApiError(400, field, "unknown field (settable: pinned, max_parallel, max_num_predict)")
        pinned = body.get("pinned")
        if "pinned" in body and not isinstance(pinned, bool):
            raise ApiError(400, "pinned", f"must be true or false, not {pinned!r:.40}")
        parallel = body.get("max_parallel")
        if "max_parallel" in body and (isinstance(parallel, bool) or not isinstance(parallel, int)
                                       or not 1 <= parallel <= 1024):
            raise ApiError(400, "max_parallel", f"must be an integer in 1..1024, not {parallel!r:.40}")
        ceiling = body.get("max_num_predict")
        if "max_num_predict" in body and (isinstance(ceiling, bool) or not isinstance(ceiling, int)
                                          or not 0 <= ceiling <= MAX_NUM_PREDICT):
            raise ApiError(400, "max_num_predict", f"must be an integer in 0..{MAX_NUM_PREDICT} (0: "
                                                   f"MM_MAX_NUM_PREDICT), not {ceiling!r:.40}")
        if "pinned" in body and not pinned and name in self.gw.settings.pinned:
            raise ApiError(409, "pinned", f"{name} is pinned by MM_PINNED_MODELS; remove it there")
        await self.run(one_model, self.gw.r, self.gw.settings, name)  # 404 for an unknown model
        if "pinned" in body:
            await self.run(set_pinned, self.gw.r, name, pinned, "gateway patch")
        if "max_parallel" in body:
            await self.run(registry.set_flags, self.gw.r, name, max_parallel=parallel)
            await self.run(self.gw.r.lpush, keys.WAKE, 1)
        if "max_num_predict" in body:
            await self.run(registry.set_flags, self.gw.r, name, max_num_predict=ceiling)
        self.send_json(await self.run(one_model, self.gw.r, self.gw.settings, name))


class StartHandler(BaseHandler):
    async def post(self, name: str) -> None:
        wait = self.query_number("wait", 0.0, minimum=0, maximum=MAX_WAIT_S)
        pin_arg = self.get_query_argument("pin", "true")
        if pin_arg not in ("true", "false"):
            raise ApiError(400, "pin", f"must be true or false, not {pin_arg!r:.40}")
        pin = pin_arg == "true"
        view = await self.run(start, self.gw.r, self.gw.settings, name, pin)
        if wait and view["job_id"]:  # the warm-up job ends once the model is loaded and has answered
            deadline = time.monotonic() + wait
            try:
                await wait_result(self.run, view["job_id"], wait, lambda: self.client_gone)
            except JobFailed as exc:
                view["warmup_error"] = str(exc)
            wait = max(0.0, deadline - time.monotonic())
        if wait and view["status"] != "running":
            await wait_until(self, lambda: one_model(self.gw.r, self.gw.settings, name)["status"] == "running", wait)
        if wait:
            view = view | await self.run(one_model, self.gw.r, self.gw.settings, name)
        self.send_json(view, 200 if view["status"] == "running" else 202)


class StopHandler(BaseHandler):
    async def post(self, name: str) -> None:
        wait = self.query_number("wait", 0.0, minimum=0, maximum=MAX_WAIT_S)
        view = await self.run(stop, self.gw.r, self.gw.settings, name)
        if wait and view["resident_on"]:
            await wait_until(self, lambda: not one_model(self.gw.r, self.gw.settings, name)["resident_on"], wait)
            view = {"unload_requested_on": view["unload_requested_on"]} | await self.run(
                one_model, self.gw.r, self.gw.settings, name)
        self.send_json(view, 200 if not view["resident_on"] else 202)


class InferHandler(BaseHandler):
    async def post(self, name: str) -> None:
        body = self.json_body()
        if "model" in body and body["model"] != name:
            raise ApiError(400, "model", "the model is named in the path; leave it out of the body")
        body.pop("model", None)
        timeout = body.pop("timeout", None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= self.gw.settings.gateway_wait_s):
            raise ApiError(400, "timeout", f"must be a number of seconds in (0, {self.gw.settings.gateway_wait_s}]")
        kwargs = submit_kwargs({"model": name, **body}, ("model", *INFER_FIELDS))
        if "priority" not in kwargs:
            kwargs["priority"] = priority_from(self.request.headers.get(PRIORITY_HEADER))
        if isinstance(kwargs.get("metadata", {}), dict):
            kwargs["metadata"] = {"via": "gateway", **kwargs.get("metadata", {})}
        job = await within_limit(self, functools.partial(submit, kwargs))
        self.set_header("X-MM-Job-Id", job.id)
        try:
            result = await wait_result(self.run, job.id, float(timeout or self.gw.settings.gateway_wait_s),
                                       lambda: self.client_gone)
        except JobFailed as exc:
            if isinstance(exc, JobLost):
                raise
            raise ApiError(exc.status or 502, "job_id", f"job {job.id} failed: {exc}") from None
        if result is None:
            if self.client_gone:  # nobody learned its id: nobody reads its answer
                await self.run(cancel.cancel, self.gw.r, job.id, cancel.CLIENT_GONE,
                               self.gw.settings.result_expires_s)
                return
            self.send_json({"job_id": job.id, "status": await self.run(job.status), "model": name}, 202)
            return
        self.send_json({"job_id": job.id, "status": "complete", "model": name, "result": _result_text(result),
                        "timings": result.get("timings"), "output": result})


def handlers(gw: Gateway) -> list[tuple]:
    from mm.gateway import history

    args = {"gw": gw}
    return [
        (r"/api/models", ModelsHandler, args),
        (r"/api/models/(.+)/start", StartHandler, args),
        (r"/api/models/(.+)/stop", StopHandler, args),
        (r"/api/models/(.+)/infer", InferHandler, args),
        (r"/api/models/(.+)/history", history.HistoryHandler, args),
        (r"/api/models/(.+)", ModelHandler, args),
    ]
