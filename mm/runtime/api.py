"""Inference endpoints: /api/generate, /api/chat, /api/embed and the legacy /api/embeddings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from mm.runtime.durations import ns, rfc3339
from mm.runtime.engines.base import Stats
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

    def _frame(self, model: str, text: str, done: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {"model": model, "created_at": rfc3339()}
        if self.chat:
            frame["message"] = {"role": "assistant", "content": text}
        else:
            frame["response"] = text
        frame["done"] = done
        return frame

    @api_call
    async def _serve(self) -> None:
        started = time.monotonic()
        req = self.parse(self.request.body)
        spec = self.state.spec(req.model)
        self.log_detail = f" model={spec.name}"
        if spec.kind == "embed":
            raise BadRequest(f'"{req.model}" does not support {"chat" if self.chat else "generate"}')
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
        stats: Stats | None = None
        generation = runner.engine.generate(runner.loaded, req.job)
        async with contextlib.aclosing(generation):
            async for item in generation:
                if isinstance(item, Stats):
                    stats = item
                    break
                if req.stream:
                    if not self.streaming:
                        self.streaming = True
                        self.set_header("Content-Type", "application/x-ndjson")
                    for piece in item:  # one line per token, one flush per wake-up
                        self.write(_dumps(self._frame(req.model, piece, False)))
                    await self.flush()
                else:
                    pieces.extend(item)
        assert stats is not None, "engine ended without stats"
        final = self._frame(req.model, "".join(pieces), True)
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


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"
