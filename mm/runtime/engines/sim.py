"""The simulated engine: timings from the model spec, deterministic text, asyncio sleeps only.

Loads take ``size / load_bandwidth`` seconds, prompt evaluation ``tokens / prompt_rate``, and each
generated token ``1 / eval_rate``. Tokens are released on an absolute schedule, so when the
event loop is busy a stream catches up by sending several tokens in one wake-up: hundreds of
concurrent streams fit on one core and the reported durations stay the simulated ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
import random
from dataclasses import dataclass
from typing import Any
from collections.abc import AsyncIterator, Iterator

from mm.runtime.catalog import ModelSpec
from mm.runtime.engines.base import Embedding, GenerationJob, Options, Stats
from mm.runtime.engines.text import StopMatcher, count_tokens, render_prompt
from mm.runtime.errors import EngineError

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


def _target_length(opts: Options, num_ctx: int, prompt_tokens: int, rng: random.Random) -> tuple[int, str]:
    """How many tokens to produce and the done_reason if nothing stops it earlier."""
    n = opts.num_predict
    if n is None or n == -1:
        return 16 + rng.randrange(48), "stop"
    if n == -2 or n < -2:
        return max(0, num_ctx - prompt_tokens), "length"
    return n, "length"


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

    async def generate(self, loaded: SimModel, job: GenerationJob) -> AsyncIterator[list[str] | Stats]:
        """Yield batches of token strings on the simulated schedule, then the :class:`Stats`."""
        spec, opts = loaded.spec, job.options
        prompt = render_prompt(job)
        prompt_tokens = count_tokens(prompt) + sum(len(m.images) for m in job.messages or []) + len(job.images)
        seeded = opts.seed is not None or opts.temperature == 0
        rng = _rng(spec.name, prompt, opts.seed, job.format) if seeded else random.Random(os.urandom(8))
        # The length comes from its own stream, so num_predict cuts the very same text short.
        limit, reason = _target_length(opts, loaded.num_ctx, prompt_tokens, random.Random(rng.random()))
        tokens = _json_tokens(job.format, rng) if job.format else _words(rng)
        prompt_time = prompt_tokens / spec.prompt_rate
        await asyncio.sleep(prompt_time)

        loop = asyncio.get_running_loop()
        start, rate = loop.time(), spec.eval_rate
        stops = StopMatcher(opts.stop)
        produced = 0
        while produced < limit:
            delay = start + (produced + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due = min(limit, max(produced + 1, math.floor((loop.time() - start) * rate + 1e-9)))
            batch: list[str] = []
            stopped = False
            while produced < due and not stopped:
                if spec.fail_after is not None and produced >= spec.fail_after:
                    if batch:
                        yield batch
                    raise EngineError(f"simulated failure after {produced} tokens (fail_after)")
                text, stopped = stops.feed(next(tokens))
                produced += 1
                if text:
                    batch.append(text)
            if batch:
                yield batch
            if stopped:
                reason = "stop"
                break
        else:
            tail = stops.flush()
            if tail:
                yield [tail]
        yield Stats(prompt_tokens, prompt_time, produced, produced / rate, reason)

    async def embed(self, loaded: SimModel, inputs: list[str], options: Options, truncate: bool = True) -> Embedding:
        """Unit vectors of ``embedding_dim`` seeded by a hash of model and input text."""
        spec = loaded.spec
        tokens = sum(count_tokens(text) for text in inputs)
        await asyncio.sleep(tokens / spec.prompt_rate)
        vectors = []
        for text in inputs:
            rng = _rng("embed", spec.name, text)
            raw = [rng.gauss(0.0, 1.0) for _ in range(spec.embedding_dim)]
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        return Embedding(vectors=vectors, prompt_eval_count=tokens)

    async def pull(self, spec: ModelSpec) -> AsyncIterator[dict[str, Any]]:
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
