"""An Ollama-compatible proxy: every generate, chat and embed request becomes an mm job.

Point an unmodified Ollama client at the gateway: ``POST /api/generate``, ``/api/chat``,
``/api/embed`` (and the legacy ``/api/embeddings``), ``GET /api/tags``, ``/api/ps``,
``/api/version`` and ``POST /api/show`` answer as Ollama does. The job's priority comes from the
``X-MM-Priority`` header (default ``normal``), its deadline from ``X-MM-Deadline`` (seconds; none by
default), and a key past ``MM_MAX_QUEUED_PER_KEY`` is answered 429 (:mod:`mm.gateway.queued_limit`).
Streaming relays the worker's tokens as they come.

What differs from talking to Ollama directly: ``keep_alive`` is ignored (mm decides residency),
except that an empty prompt with ``keep_alive: 0`` asks the leader to unload the model, and an
empty prompt otherwise loads it (through a one-token warm-up job, so the policy decides where).
Ollama's other request fields (``tools``, ``think``, ``raw``, ``template``, ``suffix``,
``context``, ``logprobs``, ``top_logprobs``, ``dimensions``, ``truncate``) go to the runtime with
the job. A job the runtime refused is answered with the runtime's status (400 stays 400); what
validation accepted but will not do as asked (a ``num_ctx`` other than the model's) is said in
``warnings`` and ``X-MM-Warning`` headers. A client that hangs up before its answer is complete
cancels its job (the worker stops the runtime's generation); a job cancelled otherwise is answered 409.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import httpx
import redis
import tornado.iostream

from mm import cancel, client, keys, registry, replies, store
from mm.errors import JobFailed, JobLost
from mm.gateway import status
from mm.gateway.base import ApiError, BaseHandler, Gateway, log
from mm.gateway.models import warmup_kind
from mm.gateway.ollama_shape import (
    CACHE_HEADER,
    DEADLINE_HEADER,
    PRIORITY_HEADER,
    adjust_final_chunk,
    cache_from,
    chat_response,
    created_at,
    deadline_from,
    embed_response,
    final_chunks,
    format_value,
    generate_response,
    model_name,
    ollama_fields,
    priority_from,
    stream_flag,
)
from mm.gateway.queued_limit import within_limit
from mm.gateway.waiting import relay, streaming_supported, wait_result
from mm.runtime.handlers import OLLAMA_VERSION

SHOW_TIMEOUT_S = 5.0
ZERO_KEEP_ALIVE = (0, 0.0, "0", "0s", "0m", "0h")


def not_found(model: str) -> ApiError:
    return ApiError(404, "model", f'model "{model}" not found, try pulling it first')


def runtime_failure(exc: JobFailed) -> ApiError | JobFailed:
    """A failed job as the runtime answered it: its status (400 stays 400); 502 for mm's own failures."""
    if isinstance(exc, JobLost) or exc.status is None:
        return exc
    return ApiError(exc.status, "", str(exc))


def submit_job(model: str, kwargs: dict[str, Any], stream: bool, cache: bool | None = None) -> client.Job:
    """``mm.submit`` for the proxy; an unknown model gets Ollama's 404 wording. ``cache``: what the
    request's ``X-MM-Cache`` header says (None: the default)."""
    if model not in registry.names(store.connect()):
        raise not_found(model)
    if stream:
        kwargs = kwargs | {"stream": True}
    if cache is not None:
        kwargs = kwargs | {"cache": cache}
    return client.submit(model, **kwargs)


def mm_waits(r: redis.Redis, job_id: str) -> tuple[float, float]:
    """(queue wait, scheduler load waited for) of a started job, from its record and its node; (0, 0)
    while Redis is unreachable: the answer is whole, and its final line is not held back for them."""
    try:
        record = {replies.text(k): replies.text(v) for k, v in r.hgetall(keys.job(job_id)).items()}
        raw = r.get(keys.node_state(record.get("node", ""))) if record.get("node") else None
    except redis.ConnectionError:  # Redis restarting (the 60-minute chaos soak ended a stream so)
        return 0.0, 0.0
    submitted = float(record.get("submitted_at") or 0)
    started = float(record.get("started_at") or 0)
    queue_wait = max(0.0, started - submitted) if submitted and started else 0.0
    load_s = 0.0
    if raw:
        resident: dict[str, Any] = next(
            (m for m in json.loads(raw).get("resident", []) if m.get("model") == record.get("model")), {})
        if float(resident.get("loaded_at") or 0) > submitted:
            load_s = float(resident.get("load_s") or 0.0)
    return queue_wait, load_s


class ProxyHandler(BaseHandler):
    """Shared by generate, chat and embed: submit, then answer whole or streamed."""

    kind = "generate"
    job_id: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {"via": "gateway", "endpoint": self.request.path,
                "client": self.request.headers.get("User-Agent", "")[:120]}

    def cache_choice(self) -> bool | None:
        """The request's ``X-MM-Cache`` header: ``use`` the result cache, ``off``, or None (the default)."""
        return cache_from(self.request.headers.get(CACHE_HEADER))

    def deadline(self) -> dict[str, Any]:
        """``deadline_s`` from the request's ``X-MM-Deadline`` header (seconds), if it has one."""
        deadline_s = deadline_from(self.request.headers.get(DEADLINE_HEADER))
        return {} if deadline_s is None else {"deadline_s": deadline_s}

    async def submit(self, model: str, kwargs: dict[str, Any], live: bool) -> client.Job:
        """Submit the request's job; its id and validation's warnings go in the answer's headers."""
        job = await within_limit(self, functools.partial(
            submit_job, model, kwargs | {"metadata": self.metadata()} | self.deadline(), live, self.cache_choice()))
        self.set_header("X-MM-Job-Id", job.id)
        self.job_id = job.id
        for warning in job.warnings:
            self.add_header("X-MM-Warning", warning)
        return job

    async def answer(self, model: str, kwargs: dict[str, Any], stream: bool) -> None:
        live = stream and self.kind != "embed" and streaming_supported()
        job = await self.submit(model, kwargs, live)
        try:
            if live:
                await self.relay(model, job)
                return
            result = await wait_result(self.run, job.id, self.gw.settings.gateway_wait_s, lambda: self.client_gone)
        except JobFailed as exc:
            raise runtime_failure(exc) from None
        if result is None:
            if self.client_gone:
                await self.drop(job)
                return
            raise ApiError(504, "", f"job {job.id} did not finish within {self.gw.settings.gateway_wait_s}s; "
                                    f"follow it at /api/job/{job.id}")
        created = created_at(result, status.iso(time.time()))
        if self.kind == "embed":
            self.send_json(self.embed_answer(model, result))
        elif not stream:
            shape = chat_response if self.kind == "chat" else generate_response
            self.send_json(shape(model, result, created))
        else:  # the worker cannot stream tokens: the whole answer as one chunk, then the final one
            for chunk in final_chunks(self.kind, model, result, created):
                await self.send_line(chunk)
            self.finish()

    def embed_answer(self, model: str, result: dict[str, Any]) -> dict[str, Any]:
        return embed_response(model, result)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.job_id:  # an error answer starts with cleared headers: keep the failed job findable
            self.set_header("X-MM-Job-Id", self.job_id)
        super().write_error(status_code, **kwargs)

    async def drop(self, job: client.Job) -> None:
        """Cancel the job of a client that hung up: nobody reads its answer (a job of /api/submit,
        meant to outlive its request, never comes here)."""
        outcome = await self.run(cancel.cancel, self.gw.r, job.id, cancel.CLIENT_GONE,
                                 self.gw.settings.result_expires_s)
        if outcome.result in ("cancelled", "stopping"):
            log.info("%s %s: the client hung up; job %s cancelled", self.request.method, self.request.path, job.id)

    async def relay(self, model: str, job: client.Job) -> None:
        chunks = relay(job, self.gw.stream_executor, self.gw.settings.gateway_wait_s, self.when_gone)
        try:
            async for chunk in chunks:
                if self.client_gone:
                    break
                if chunk.get("done"):
                    chunk = adjust_final_chunk(chunk, *await self.run(mm_waits, self.gw.r, job.id))
                    if job.warnings:
                        chunk["warnings"] = list(job.warnings)
                await self.send_line(chunk)
        except tornado.iostream.StreamClosedError:
            self.client_gone = True
            raise
        finally:
            await chunks.aclose()
            if self.client_gone:
                await self.drop(job)
        if not self._finished and not self.client_gone:
            self.finish()

    async def load_or_unload(self, model: str, body: dict[str, Any], stream: bool) -> None:
        """Ollama's empty request: load the model, or unload it with ``keep_alive: 0``."""
        if not await self.run(self.gw.r.hexists, keys.MODELS, model):
            raise not_found(model)
        if body.get("keep_alive") in ZERO_KEEP_ALIVE:
            await self.run(request_unload, self.gw.r, model)
            reason = "unload"
        else:
            job = await self.run(warmup, self.gw.r, model, priority_from(self.request.headers.get(PRIORITY_HEADER)))
            if job is not None:
                self.set_header("X-MM-Job-Id", job.id)
                result = await wait_result(self.run, job.id, self.gw.settings.gateway_wait_s, lambda: self.client_gone)
                if result is None:
                    if self.client_gone:
                        return
                    raise ApiError(504, "", f"{model} was not loaded within {self.gw.settings.gateway_wait_s}s")
            reason = "load"
        created = status.iso(time.time())
        if self.kind == "embed":
            answer: dict[str, Any] = {"model": model, "embeddings": [], "total_duration": 0, "load_duration": 0,
                                      "prompt_eval_count": 0}
        elif self.kind == "chat":
            answer = {"model": model, "created_at": created, "message": {"role": "assistant", "content": ""},
                      "done_reason": reason, "done": True}
        else:
            answer = {"model": model, "created_at": created, "response": "", "done": True, "done_reason": reason}
        if stream and self.kind != "embed":
            await self.send_line(answer)
            self.finish()
        else:
            self.send_json(answer)


def request_unload(r: redis.Redis, model: str) -> list[str]:
    """Ask the leader to unload ``model`` wherever it is resident (it re-checks pins and jobs)."""
    nodes = []
    for name in replies.members(r.zrange(keys.NODES, 0, -1)):
        raw = r.get(keys.node_state(name.decode()))
        if raw and any(m.get("model") == model for m in json.loads(raw).get("resident", [])):
            r.hset(keys.UNLOAD_REQUESTS, f"{name.decode()}|{model}", "keep_alive 0 through the gateway")
            nodes.append(name.decode())
    if nodes:
        r.lpush(keys.WAKE, 1)
    return nodes


def warmup(r: redis.Redis, model: str, priority: str) -> client.Job | None:
    """A one-token job that makes the policy load ``model``; None if it is resident already."""
    for name in replies.members(r.zrange(keys.NODES, 0, -1)):
        raw = r.get(keys.node_state(name.decode()))
        if raw and any(m.get("model") == model for m in json.loads(raw).get("resident", [])):
            return None
    kind = warmup_kind(r, model)
    return client.submit(model, "Hello" if kind == "generate" else "warm-up", kind=kind, priority=priority,
                         options={"num_predict": 1} if kind == "generate" else None,
                         metadata={"via": "gateway", "purpose": "load"}, cache=False)


class GenerateHandler(ProxyHandler):
    kind = "generate"

    async def post(self) -> None:
        body = self.json_body()
        model = model_name(body)
        stream = stream_flag(body)
        priority = priority_from(self.request.headers.get(PRIORITY_HEADER))
        prompt = body.get("prompt") or ""
        images = body.get("images") or None
        if prompt == "" and not images:
            await self.load_or_unload(model, body, stream)
            return
        kwargs = {"prompt": prompt, "kind": "generate", "priority": priority, "options": body.get("options"),
                  "images": images, "format": format_value(body), "system": body.get("system") or None,
                  **ollama_fields("generate", body)}
        await self.answer(model, kwargs, stream)


class ChatHandler(ProxyHandler):
    kind = "chat"

    async def post(self) -> None:
        body = self.json_body()
        model = model_name(body)
        stream = stream_flag(body)
        priority = priority_from(self.request.headers.get(PRIORITY_HEADER))
        messages = body.get("messages")
        if messages is None or messages == []:
            await self.load_or_unload(model, body, stream)
            return
        kwargs = {"messages": messages, "kind": "chat", "priority": priority, "options": body.get("options"),
                  "format": format_value(body), **ollama_fields("chat", body)}
        await self.answer(model, kwargs, stream)


class EmbedHandler(ProxyHandler):
    kind = "embed"
    field = "input"

    async def post(self) -> None:
        body = self.json_body()
        model = model_name(body)
        text = body.get(self.field)
        if text is None or text == "" or text == []:
            await self.load_or_unload(model, body, False)
            return
        kwargs = {"prompt": text, "kind": "embed",
                  "priority": priority_from(self.request.headers.get(PRIORITY_HEADER)),
                  "options": body.get("options"), **ollama_fields("embed", body)}
        await self.answer(model, kwargs, False)


class LegacyEmbeddingsHandler(EmbedHandler):
    """``POST /api/embeddings`` {model, prompt} -> {embedding}."""

    field = "prompt"

    def embed_answer(self, model: str, result: dict[str, Any]) -> dict[str, Any]:
        embeddings = result.get("embeddings") or [[]]
        return {"embedding": embeddings[0]}

    async def post(self) -> None:
        body = self.json_body()
        if isinstance(body.get("prompt"), list):
            raise ApiError(400, "prompt", "must be a string (use /api/embed for several inputs)")
        await super().post()


def tags(r: redis.Redis) -> dict[str, Any]:
    models = []
    for name, entry in sorted(registry.all_models(r).items()):
        models.append({"name": name, "model": name, "modified_at": status.iso(entry.synced_at or time.time()),
                       "size": entry.tag_size, "digest": entry.digest, "details": entry.details})
    return {"models": models}


def ps(r: redis.Redis) -> dict[str, Any]:
    entries = registry.all_models(r)
    nodes, _ = status.nodes(r, time.time())
    models = []
    for node in nodes:
        for m in node["resident"]:
            entry = entries.get(m["model"])
            item = {"name": m["model"], "model": m["model"], "size": m["size"], "size_vram": m["size_vram"],
                    "digest": m["digest"], "details": entry.details if entry else {},
                    "context_length": entry.num_ctx if entry else 0}
            if m.get("expires_at"):
                item["expires_at"] = status.iso(m["expires_at"])
            models.append(item)
    return {"models": models}


def show(r: redis.Redis, model: str) -> dict[str, Any]:
    """The runtime's own /api/show for ``model`` (from a node serving it), else the registry's facts."""
    entry = registry.get(r, model)
    if entry is None:
        raise not_found(model)
    for node in entry.nodes:
        raw = r.get(keys.node_state(node))
        url = json.loads(raw).get("runtime_url") if raw else None
        if not url:
            continue
        try:
            reply = httpx.post(f"{url}/api/show", json={"model": model}, timeout=SHOW_TIMEOUT_S)
            if reply.status_code == 200:
                return reply.json()
        except (httpx.HTTPError, ValueError):
            continue
    return {"modelfile": "", "parameters": f"num_ctx {entry.num_ctx}", "template": "", "details": entry.details,
            "model_info": {}, "capabilities": entry.capabilities or []}


class TagsHandler(BaseHandler):
    async def get(self) -> None:
        self.send_json(await self.run(tags, self.gw.r))


class PsHandler(BaseHandler):
    async def get(self) -> None:
        self.send_json(await self.run(ps, self.gw.r))


class VersionHandler(BaseHandler):
    async def get(self) -> None:
        self.send_json({"version": OLLAMA_VERSION})


class ShowHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body()
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model", "model is required")
        self.send_json(await self.run(show, self.gw.r, model))


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/api/generate", GenerateHandler, args),
        (r"/api/chat", ChatHandler, args),
        (r"/api/embed", EmbedHandler, args),
        (r"/api/embeddings", LegacyEmbeddingsHandler, args),
        (r"/api/tags", TagsHandler, args),
        (r"/api/ps", PsHandler, args),
        (r"/api/version", VersionHandler, args),
        (r"/api/show", ShowHandler, args),
    ]

