"""OpenAI-compatible endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.

Each request becomes an mm job through the same validation, queues, priorities, metrics and auth as
the Ollama proxy (:mod:`mm.gateway.proxy`); :mod:`mm.gateway.openai_shape` converts the shapes. The
gateway's API keys are the SDK's ``api_key``; the priority comes from ``X-MM-Priority`` or the
body's ``priority`` (the SDK's ``extra_body``). Streaming answers are server-sent events ending
with ``data: [DONE]``. Every error, auth and unknown paths under ``/v1`` included, is OpenAI's
``{"error": {message, type, param, code}}``. A client that hangs up before its answer is complete
cancels its job, as on the Ollama routes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis
import tornado.httputil
import tornado.iostream
import tornado.web

from mm import client, registry
from mm.errors import JobFailed
from mm.gateway import status
from mm.gateway.base import ApiError, BaseHandler, Gateway, log, status_for
from mm.gateway.ollama_shape import PRIORITY_HEADER, created_at, final_chunks
from mm.gateway.openai_shape import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    OpenAIError,
    encoding_format,
    job_kwargs,
    model_not_found,
    model_object,
    openai_error,
    priority_of,
    response_body,
    stream_of,
)
from mm.gateway.openai_stream import StreamShaper
from mm.gateway.proxy import ProxyHandler
from mm.gateway.waiting import relay, streaming_supported, wait_result

SSE = "text/event-stream; charset=utf-8"


def as_openai(status_code: int, exc: BaseException | None) -> OpenAIError:
    """The OpenAI error for an exception (or a bare status) raised while serving a ``/v1`` request."""
    if exc is None:
        return OpenAIError(status_code, tornado.httputil.responses.get(status_code, "error"))
    if isinstance(exc, tornado.web.HTTPError):
        _status, _field, message = status_for(exc)
        return OpenAIError(exc.status_code, message, code="method_not_allowed" if exc.status_code == 405 else None)
    if isinstance(exc, ApiError) and exc.status == 401:
        return OpenAIError(401, f"Incorrect API key provided: {exc.message}", code="invalid_api_key")
    return openai_error(exc)


class OpenAIErrors(BaseHandler):
    """OpenAI's error shape for every error of a ``/v1`` handler, in-band once an event stream began."""

    job_id: str | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = as_openai(status_code, exc)
        self.error_headers(status_code, exc)
        if self.job_id:  # an error answer starts with cleared headers: keep the failed job findable
            self.set_header("X-MM-Job-Id", self.job_id)
        self.finish(json.dumps(error.body()))

    def _handle_request_exception(self, e: BaseException) -> None:
        if self.streaming and not self._finished and not isinstance(
                e, (tornado.web.Finish, tornado.iostream.StreamClosedError)):
            error = as_openai(500, e)
            if error.status >= 500:
                log.error("%s %s failed", self.request.method, self.request.path, exc_info=e)
            try:  # headers are gone: the error is an event, as OpenAI sends it
                self.finish(f"data: {json.dumps(error.body())}\n\n")
            except tornado.iostream.StreamClosedError:
                log.info("%s %s: client gone before the error event: %s", self.request.method, self.request.path,
                         error.message)
            return
        super()._handle_request_exception(e)


class CompletionsHandler(OpenAIErrors, ProxyHandler):
    """``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``: one mm job each."""

    endpoint = CHAT

    async def post(self) -> None:
        body = self.json_body()
        model, kwargs = job_kwargs(self.endpoint, body)
        stream, include_usage = stream_of(body) if self.endpoint != EMBEDDINGS else (False, False)
        encoding = encoding_format(body) if self.endpoint == EMBEDDINGS else "float"
        kwargs = kwargs | {"priority": priority_of(body, self.request.headers.get(PRIORITY_HEADER))}
        live = stream and streaming_supported()
        job = await self.submit(model, kwargs, live)
        created = int(time.time())
        shaper = StreamShaper(self.endpoint, model, job.id, created, include_usage)
        try:
            if live:
                await self.stream_events(shaper, job)
                return
            result = await wait_result(self.run, job.id, self.gw.settings.gateway_wait_s, lambda: self.client_gone)
        except JobFailed as exc:
            raise openai_error(exc) from None
        if result is None:
            if not self.client_gone:
                raise OpenAIError(504, f"job {job.id} did not finish within {self.gw.settings.gateway_wait_s}s; "
                                       f"follow it at /api/job/{job.id}")
            await self.drop(job)
            return
        if not stream:
            self.send_json(response_body(self.endpoint, model, result, job.id, created, encoding=encoding))
            return
        # The worker cannot stream tokens: the whole answer as Ollama's chunks, shaped as OpenAI's.
        kind = "chat" if self.endpoint == CHAT else "generate"
        for chunk in final_chunks(kind, model, result, created_at(result, status.iso(created))):
            await self.send_events(shaper.chunks(chunk))
        await self.send_done()

    async def stream_events(self, shaper: StreamShaper, job: client.Job) -> None:
        """Relay the worker's tokens as OpenAI chunks (nothing is sent before the first: errors keep their status)."""
        chunks = relay(job, self.gw.stream_executor, self.gw.settings.gateway_wait_s, self.when_gone)
        try:
            async for chunk in chunks:
                if self.client_gone:
                    return
                await self.send_events(shaper.chunks(chunk))
        except tornado.iostream.StreamClosedError:
            self.client_gone = True
            raise
        finally:
            await chunks.aclose()
            if self.client_gone:  # nobody reads the rest: stop the job
                await self.drop(job)
        if not self._finished and not self.client_gone:
            await self.send_done()

    async def send_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Send server-sent events now (the first one switches the response to ``text/event-stream``)."""
        for event in events:
            if not self.streaming:
                self.streaming = True
                self.set_header("Content-Type", SSE)
                self.set_header("Cache-Control", "no-cache")
            self.write(f"data: {json.dumps(event, default=str)}\n\n")
        await self.flush()

    async def send_done(self) -> None:
        await self.send_events([])
        self.write("data: [DONE]\n\n")
        self.finish()


class TextCompletionsHandler(CompletionsHandler):
    endpoint = COMPLETIONS


class EmbeddingsHandler(CompletionsHandler):
    endpoint = EMBEDDINGS


def models_list(r: redis.Redis) -> dict[str, Any]:
    """The registry's models as OpenAI's model list."""
    entries = registry.all_models(r)
    return {"object": "list",
            "data": [model_object(name, entry.synced_at or time.time()) for name, entry in sorted(entries.items())]}


def model_view(r: redis.Redis, name: str) -> dict[str, Any]:
    """One registered model as OpenAI's model object (404 ``model_not_found`` if unknown)."""
    entry = registry.get(r, name)
    if entry is None:
        raise model_not_found(name)
    return model_object(name, entry.synced_at or time.time())


class ModelsHandler(OpenAIErrors):
    async def get(self) -> None:
        self.send_json(await self.run(models_list, self.gw.r))


class ModelHandler(OpenAIErrors):
    async def get(self, name: str) -> None:
        self.send_json(await self.run(model_view, self.gw.r, name))


class NotFoundV1Handler(OpenAIErrors):
    """Any other ``/v1`` path: OpenAI's 404."""

    public = True

    def check_request(self) -> None:
        super().check_request()
        raise OpenAIError(404, f"Invalid URL ({self.request.method} {self.request.path})", code="unknown_url")


def handlers(gw: Gateway) -> list[tuple]:
    args = {"gw": gw}
    return [
        (r"/v1/models", ModelsHandler, args),
        (r"/v1/models/(.+)", ModelHandler, args),
        (r"/v1/chat/completions", CompletionsHandler, args),
        (r"/v1/completions", TextCompletionsHandler, args),
        (r"/v1/embeddings", EmbeddingsHandler, args),
    ]


def fallback(gw: Gateway) -> list[tuple]:
    """Every other ``/v1`` path: OpenAI's 404 (routed last, after any other module's ``/v1`` routes)."""
    return [(r"/v1(?:/.*)?", NotFoundV1Handler, {"gw": gw})]
