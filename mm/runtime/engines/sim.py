"""The simulated engine: timings from the model spec, deterministic text, asyncio sleeps only.

Loads take ``size / load_bandwidth`` seconds, prompt evaluation ``tokens / prompt_rate``, and each
generated token ``1 / eval_rate``. Tokens are released on an absolute schedule, so when the
event loop is busy a stream catches up by sending several tokens in one wake-up: hundreds of
concurrent streams fit on one core and the reported durations stay the simulated ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import zlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from mm.runtime.catalog import ModelSpec
from mm.runtime.engines.base import CONTEXT_EXCEEDED, Embedding, GenerationJob, Options, Stats, Thinking
from mm.runtime.engines.text import StopMatcher, count_tokens, render_prompt
from mm.runtime.engines.text import tokens as tokens_of
from mm.runtime.errors import BadRequest, EngineError

_WORDS = (
    "the model scheduler memory token request stream answer question light river mountain "
    "system sky blue green time value signal worker queue result simple quiet bright small large "
    "early late because therefore while under over between into across about every many few "
    "data layer cache budget load run wait serve reply think learn build test measure count "
    "red ocean forest city road garden window paper stone cloud wind fire water earth star "
    "is are was were has have can will may should must could would does did makes takes gives "
    "and or but so yet for with without from to of in on at by as it this that these those"
).split()


@dataclass
class SimModel:
    """A resident simulated model."""

    spec: ModelSpec
    num_ctx: int
    size: int


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _words(rng: random.Random) -> Iterator[str]:
    """An endless deterministic stream of token strings forming sentence-like text."""
    first, since_period = True, 0
    while True:
        word = rng.choice(_WORDS)
        if first:
            yield word.capitalize()
            first = False
        else:
            yield " " + (word.capitalize() if since_period == 0 else word)
        since_period += 1
        if since_period > 4 and rng.random() < 0.15:
            yield "."
            since_period = 0


def _json_tokens(schema: Any, rng: random.Random) -> Iterator[str]:
    """Tokens of a JSON object (matching a schema's top-level properties when one is given)."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    props = props if isinstance(props, dict) and props else {"response": {"type": "string"}}
    yield "{"
    for i, (key, sub) in enumerate(props.items()):
        yield (", " if i else "") + f'"{key}": '
        kind = sub.get("type") if isinstance(sub, dict) else "string"
        if kind in ("integer", "number"):
            yield str(rng.randrange(100))
        elif kind == "boolean":
            yield rng.choice(("true", "false"))
        else:
            yield '"'
            yield from itertools.islice(_words(rng), rng.randrange(2, 6))
            yield '"'
    yield "}"
    while True:  # past the object: whitespace, as a JSON-constrained model pads
        yield "\n"


THINKING_TOKENS = {"low": 8, "medium": 16, "high": 24, "max": 32, True: 16}


def token_ids(pieces: list[str]) -> list[int]:
    """Stable stand-ins for token ids (a generate answer's ``context``)."""
    return [zlib.crc32(p.encode()) % 32_000 for p in pieces]


def fit_prompt(job: GenerationJob, num_ctx: int) -> tuple[str, int]:
    """The prompt the model sees and its tokens, within ``num_ctx`` as Ollama fits it.

    A chat drops its oldest messages (keeping system ones and always the last); what is still too
    long keeps its end. With ``truncate: false`` an over-long prompt is refused instead.

    Raises:
        BadRequest: Ollama's "the input length exceeds the context length" (truncate false).
    """
    images = sum(len(m.images) for m in job.messages or []) + len(job.images)

    def size(prompt: str) -> int:
        return count_tokens(prompt) + images + len(job.context)

    prompt = render_prompt(job)
    if size(prompt) <= num_ctx:
        return prompt, size(prompt)
    if not job.truncate:
        raise BadRequest(CONTEXT_EXCEEDED)
    if job.is_chat:
        messages = list(job.messages or [])
        first = 0
        while size(prompt) > num_ctx and first < len(messages) - 1:
            first += 1
            kept = [m for m in messages[:first] if m.role == "system"] + messages[first:]
            prompt = render_prompt(dataclasses.replace(job, messages=kept))
    if size(prompt) > num_ctx:
        prompt = " ".join(tokens_of(prompt)[-max(1, num_ctx - images - len(job.context)):])
    return prompt, min(size(prompt), num_ctx)


def _tool_call(job: GenerationJob, rng: random.Random) -> dict[str, Any] | None:
    """The sim's call of one of the request's tools, when the user spoke last (else it answers)."""
    if not job.tools or not job.messages or job.messages[-1].role != "user":
        return None
    function = rng.choice(job.tools).get("function") or {}
    params = function["parameters"] if isinstance(function.get("parameters"), dict) else {}
    props = params["properties"] if isinstance(params.get("properties"), dict) else {}
    arguments: dict[str, Any] = {}
    for name, sub in props.items():
        sub = sub if isinstance(sub, dict) else {}
        if isinstance(sub.get("enum"), list) and sub["enum"]:
            arguments[name] = rng.choice(sub["enum"])
        elif sub.get("type") in ("integer", "number"):
            arguments[name] = rng.randrange(100)
        elif sub.get("type") == "boolean":
            arguments[name] = rng.random() < 0.5
        else:
            arguments[name] = rng.choice(_WORDS)
    return {"function": {"index": 0, "name": function.get("name", ""), "arguments": arguments}}


def _target_length(opts: Options, num_ctx: int, prompt_tokens: int, rng: random.Random) -> tuple[int, str]:
    """How many tokens to produce and the done_reason if nothing stops it earlier."""
    n = opts.num_predict
    if n is None or n == -1:
        return 16 + rng.randrange(48), "stop"
    if n == -2 or n < -2:
        return max(0, num_ctx - prompt_tokens), "length"
    return n, "length"


class _Answer(NamedTuple):
    """What a generate request will produce, drawn up front so that a seed fixes all of it."""

    prompt: str
    prompt_tokens: int
    limit: int  # tokens to produce, thinking included, unless a stop sequence ends it first
    reason: str  # done_reason when the limit ends it
    call: dict[str, Any] | None  # the tool call it answers with, if any
    tokens: Iterator[str]
    thinking: int  # how many of the tokens are thinking
    thoughts: Iterator[str]


def _plan_answer(loaded: SimModel, job: GenerationJob) -> _Answer:
    """Fit the prompt and draw the answer's length, tool call and token streams from one seeded stream."""
    spec, opts = loaded.spec, job.options
    prompt, prompt_tokens = fit_prompt(job, loaded.num_ctx)
    seeded = opts.seed is not None or opts.temperature == 0
    rng = _rng(spec.name, prompt, opts.seed, job.format) if seeded else random.Random(os.urandom(8))
    # The length comes from its own stream, so num_predict cuts the very same text short.
    limit, reason = _target_length(opts, loaded.num_ctx, prompt_tokens, random.Random(rng.random()))
    call = _tool_call(job, rng)
    if call is not None:
        limit, reason = count_tokens(json.dumps(call)), "stop"
    tokens = _json_tokens(job.format, rng) if job.format else _words(rng)
    thinking = THINKING_TOKENS.get(job.think, THINKING_TOKENS[True]) if job.thinking else 0
    thoughts = _words(random.Random(rng.random())) if thinking else iter(())
    return _Answer(prompt, prompt_tokens, limit, reason, call, tokens, thinking, thoughts)


class SimEngine:
    """Serves simulated models; see the module docstring for the timing model."""

    name = "sim"

    def estimate_size(self, spec: ModelSpec, num_ctx: int) -> int:
        """Sim models occupy exactly their spec'd size."""
        return spec.size

    async def load(self, spec: ModelSpec, num_ctx: int) -> SimModel:
        """Sleep ``size / load_bandwidth`` seconds."""
        await asyncio.sleep(spec.size / spec.load_bandwidth)
        return SimModel(spec=spec, num_ctx=num_ctx, size=spec.size)

    async def unload(self, loaded: SimModel) -> None:
        """Nothing to free."""

    async def generate(self, loaded: SimModel, job: GenerationJob) -> AsyncGenerator[list[str] | Stats, None]:
        """Yield batches of token strings on the simulated schedule, then the :class:`Stats`.

        A thinking request first yields :class:`Thinking` batches; a chat with tools whose last
        message is the user's answers with a call of one of them (in ``Stats.tool_calls``).
        """
        spec, opts = loaded.spec, job.options
        prompt, prompt_tokens, limit, reason, call, tokens, thinking, thoughts = _plan_answer(loaded, job)
        prompt_time = prompt_tokens / spec.prompt_rate
        await asyncio.sleep(prompt_time)

        loop = asyncio.get_running_loop()
        start, rate = loop.time(), spec.eval_rate
        stops = StopMatcher(opts.stop)
        produced, answer = 0, []
        while produced < limit:
            delay = start + (produced + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due = min(limit, max(produced + 1, math.floor((loop.time() - start) * rate + 1e-9)))
            batch: list[str] = []
            thought = Thinking()
            stopped = False
            while produced < due and not stopped:
                if spec.fail_after is not None and produced >= spec.fail_after:
                    if batch:
                        yield batch
                    raise EngineError(f"simulated failure after {produced} tokens (fail_after)")
                produced += 1
                if produced <= thinking:
                    thought.append(next(thoughts))
                    continue
                if call is not None:  # a tool call has no text; its tokens only take their time
                    continue
                text, stopped = stops.feed(next(tokens))
                if text:
                    batch.append(text)
            if thought:
                yield thought
            if batch:
                answer.extend(batch)
                yield batch
            if stopped:
                reason = "stop"
                break
        else:
            tail = stops.flush()
            if tail:
                answer.append(tail)
                yield [tail]
        context = None if job.is_chat or job.raw else job.context + token_ids(tokens_of(prompt)) + token_ids(answer)
        yield Stats(prompt_tokens, prompt_time, produced, produced / rate, reason,
                    tool_calls=[call] if call is not None else [], context=context)

    def logprobs(self, pieces: list[str], top: int) -> list[dict[str, Any]]:
        """Ollama's ``logprobs`` entries for generated ``pieces``: made-up but stable numbers."""
        entries = []
        for piece in pieces:
            logprob = -(zlib.crc32(piece.encode()) % 1000) / 400
            entry: dict[str, Any] = {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}
            if top:
                rng = _rng("top", piece)
                others = [" " + w for w in rng.sample(_WORDS, top - 1)]
                entry["top_logprobs"] = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}] + [
                    {"token": w, "logprob": logprob - 0.5 * (i + 1), "bytes": list(w.encode())}
                    for i, w in enumerate(others)]
            entries.append(entry)
        return entries

    async def embed(self, loaded: SimModel, inputs: list[str], options: Options, truncate: bool = True) -> Embedding:
        """Unit vectors of ``embedding_dim`` seeded by a hash of model and input text (cut to num_ctx
        tokens, keeping the start as Ollama's embed does, or refused when ``truncate`` is false)."""
        spec = loaded.spec
        cut = []
        for text in inputs:
            words = tokens_of(text)
            if len(words) > loaded.num_ctx:
                if not truncate:
                    raise BadRequest(CONTEXT_EXCEEDED)
                text = " ".join(words[:loaded.num_ctx])
            cut.append(text)
        inputs = cut
        tokens = sum(count_tokens(text) for text in inputs)
        await asyncio.sleep(tokens / spec.prompt_rate)
        vectors = []
        for text in inputs:
            rng = _rng("embed", spec.name, text)
            raw = [rng.gauss(0.0, 1.0) for _ in range(spec.embedding_dim)]
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        return Embedding(vectors=vectors, prompt_eval_count=tokens)

    async def pull(self, spec: ModelSpec) -> AsyncGenerator[dict[str, Any], None]:
        """Ollama's pull status lines; a simulated model is always already present."""
        digest = f"sha256:{spec.digest}"
        yield {"status": "pulling manifest"}
        for completed in (0, spec.size // 2, spec.size):
            yield {"status": f"downloading {digest}", "digest": digest, "total": spec.size, "completed": completed}
            await asyncio.sleep(0)
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield {"status": status}

    async def close(self) -> None:
        """Nothing to release."""
