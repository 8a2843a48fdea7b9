"""Inference endpoints: /api/generate, /api/chat, /api/embed and the legacy /api/embeddings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from typing import Any, cast

from mm.runtime.catalog import ModelSpec
from mm.runtime.durations import ns, rfc3339
from mm.runtime.engines.base import Engine, ScoresTokens, Stats, Thinking
from mm.runtime.errors import BadRequest
from mm.runtime.handlers import BaseHandler, api_call
from mm.runtime.requests import InferenceRequest, parse_chat, parse_embed, parse_generate
from mm.runtime.scheduler import Runner


class InferenceHandler(BaseHandler):
    """Shared flow of generate and chat: load, wait for a slot, stream tokens, final stats."""

    chat = False
    _task: asyncio.Task[None] | None = None

    def parse(self, body: bytes) -> InferenceRequest:
        raise NotImplementedError

    async def post(self) -> None:
        # The work runs in its own task so that a client hang-up can cancel it.
        self._task = asyncio.ensure_future(self._serve())
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def on_connection_close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _frame(self, model: str, text: str, done: bool, thinking: str = "") -> dict[str, Any]:
        frame: dict[str, Any] = {"model": model, "created_at": rfc3339()}
        if self.chat:
            frame["message"] = {"role": "assistant", "content": text}
            if thinking:
                frame["message"]["thinking"] = thinking
        else:
            frame["response"] = text
            if thinking:
                frame["thinking"] = thinking
        frame["done"] = done
        return frame

    @api_call
    async def _serve(self) -> None:
        started = time.monotonic()
        req = self.parse(self.request.body)
        spec = self.state.spec(req.model)
        # The body's digest names the request in the log, so a request served twice shows as twice.
        self.log_detail = f" model={spec.name} request={hashlib.sha1(self.request.body).hexdigest()[:12]}"
        check_capabilities(spec, req, self.state.scheduler.engines[spec.engine], self.chat)
        scheduler = self.state.scheduler
        num_ctx = req.job.options.num_ctx or spec.num_ctx
        if req.nothing_to_do:
            if req.keep_alive == 0:
                await scheduler.unload_model(spec.name)
                reason = "unload"
            else:
                scheduler.release(await scheduler.acquire(spec, num_ctx, req.keep_alive))
                reason = "load"
            self.log_detail += f" done_reason={reason}"
            self.send_json({**self._frame(req.model, "", True), "done_reason": reason})
            return
        runner = await scheduler.acquire(spec, num_ctx, req.keep_alive)
        loaded_at = time.monotonic()
        try:
            async with runner.slots.hold():
                self.log_detail += (f" load={loaded_at - started:.3f}s wait={time.monotonic() - loaded_at:.3f}s"
                                    f" running={runner.slots.busy}/{runner.slots.size}")
                await self._generate(req, runner, started, loaded_at)
        finally:
            scheduler.release(runner)

    async def _generate(self, req: InferenceRequest, runner: Runner, started: float, loaded_at: float) -> None:
        pieces: list[str] = []
        thoughts: list[str] = []
        logprobs: list[dict[str, Any]] = []
        stats: Stats | None = None
        job, engine = req.job, runner.engine
        scorer = cast(ScoresTokens, engine)  # asked only for logprobs, which check_capabilities allows only if it is
        generation = engine.generate(runner.loaded, job)
        async with contextlib.aclosing(generation):
            async for item in generation:
                if isinstance(item, Stats):
                    stats = item
                    break
                thinking = isinstance(item, Thinking)
                if req.stream:
                    if not self.streaming:
                        self.streaming = True
                        self.set_header("Content-Type", "application/x-ndjson")
                    for piece in item:  # one line per token, one flush per wake-up
                        frame = self._frame(req.model, "" if thinking else piece, False, piece if thinking else "")
                        if job.logprobs and not thinking:
                            frame["logprobs"] = scorer.logprobs([piece], job.top_logprobs)
                        self.write(_dumps(frame))
                    await self.flush()
                else:
                    (thoughts if thinking else pieces).extend(item)
                    if job.logprobs and not thinking:
                        logprobs.extend(scorer.logprobs(item, job.top_logprobs))
        assert stats is not None, "engine ended without stats"
        if stats.tool_calls:
            calls = self._frame(req.model, "", False)
            calls["message"]["tool_calls"] = stats.tool_calls
            if req.stream:
                await self.send_line(calls)
        final = self._frame(req.model, "".join(pieces), True, "".join(thoughts))
        if stats.tool_calls and not req.stream:
            final["message"]["tool_calls"] = stats.tool_calls
        if logprobs:
            final["logprobs"] = logprobs
        if stats.context is not None and not self.chat:
            final["context"] = stats.context
        final.update(
            done_reason=stats.done_reason,
            total_duration=ns(time.monotonic() - started),
            load_duration=ns(loaded_at - started),
            prompt_eval_count=stats.prompt_eval_count,
            prompt_eval_duration=ns(stats.prompt_eval_duration),
            eval_count=stats.eval_count,
            eval_duration=ns(stats.eval_duration),
        )
        self.log_detail += f" prompt_tokens={stats.prompt_eval_count} eval_count={stats.eval_count}"
        if req.stream:
            await self.send_line(final)
            self.finish()
        else:
            self.send_json(final)


class GenerateHandler(InferenceHandler):
    """POST /api/generate."""

    def parse(self, body: bytes) -> InferenceRequest:
        return parse_generate(body)


class ChatHandler(InferenceHandler):
    """POST /api/chat."""

    chat = True

    def parse(self, body: bytes) -> InferenceRequest:
        return parse_chat(body)


class EmbedHandler(BaseHandler):
    """POST /api/embed (and, with ``legacy``, POST /api/embeddings)."""

    legacy = False

    @api_call
    async def post(self) -> None:
        started = time.monotonic()
        req = parse_embed(self.request.body, legacy=self.legacy)
        spec = self.state.spec(req.model)
        self.log_detail = f" model={spec.name} inputs={len(req.inputs)}"
        scheduler = self.state.scheduler
        runner = await scheduler.acquire(spec, req.options.num_ctx or spec.num_ctx, req.keep_alive)
        loaded_at = time.monotonic()
        try:
            if req.inputs:
                async with runner.slots.hold():
                    result = await runner.engine.embed(runner.loaded, req.inputs, req.options, req.truncate)
                vectors, count = result.vectors, result.prompt_eval_count
                if 0 < req.dimensions < len(vectors[0]):
                    vectors = [_normalise(v[:req.dimensions]) for v in vectors]
            else:
                vectors, count = [], 0
        finally:
            scheduler.release(runner)
        if self.legacy:
            self.send_json({"embedding": vectors[0] if vectors else []})
            return
        self.send_json({"model": req.model, "embeddings": vectors, "total_duration": ns(time.monotonic() - started),
                        "load_duration": ns(loaded_at - started), "prompt_eval_count": count})


class LegacyEmbeddingsHandler(EmbedHandler):
    """POST /api/embeddings: one ``prompt`` -> ``{"embedding": [...]}``."""

    legacy = True


def check_capabilities(spec: ModelSpec, req: InferenceRequest, engine: Engine, chat: bool) -> None:
    """Refuse what the model or engine cannot do, with Ollama's errors (400), before any load.

    Raises:
        BadRequest: e.g. ``"sim-b:3b does not support tools"``, ``"\"x\" does not support generate"``.
    """
    job = req.job
    capabilities = spec.all_capabilities()
    if job.suffix and "insert" not in capabilities:
        raise BadRequest(f"{spec.name} does not support insert")
    if job.thinking and "thinking" not in capabilities:
        raise BadRequest(f'"{req.model}" does not support thinking')
    if "completion" not in capabilities:
        raise BadRequest(f'"{req.model}" does not support {"chat" if chat else "generate"}')
    if job.tools and "tools" not in capabilities:
        raise BadRequest(f"{spec.name} does not support tools")
    if job.logprobs and not hasattr(engine, "logprobs"):
        raise BadRequest(f"{spec.name} does not support logprobs (the {spec.engine} engine computes none)")


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"
