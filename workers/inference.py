"""Running one job against the runtime: the Ollama call, retries, and the result with its timings."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import httpx
import ollama

from mm.errors import JobFailed
from mm.settings import Settings

log = logging.getLogger("mm.worker")

NS = 1e9
# The runtime's own final fields, kept so a proxy can answer exactly as Ollama would.
RUNTIME_FIELDS = ("model", "created_at", "done", "done_reason", "total_duration", "load_duration",
                  "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


def is_transient(exc: Exception) -> bool:
    """Connection trouble and 5xx answers (other than out-of-memory) are worth retrying."""
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code in (429, 502, 503, 504) or (
            exc.status_code >= 500 and "memory" not in str(exc.error).lower()
        )
    return isinstance(exc, (ConnectionError, httpx.TransportError, TimeoutError))


Publish = Callable[[dict[str, Any]], None]


def call_runtime(client: ollama.Client, request: dict[str, Any], load_options: dict[str, Any],
                 publish: Publish | None = None) -> dict[str, Any]:
    """One Ollama call for ``request``; keep_alive -1 so that only mm unloads.

    With ``publish``, generate and chat stream: each chunk is published as it comes and the
    final object is returned with the whole text.
    """
    options = {**request.get("options", {}), **load_options}
    common = {"model": request["model"], "keep_alive": -1, "options": options}
    kind = request["kind"]
    stream = publish is not None and kind != "embed"
    if kind == "generate":
        response = client.generate(
            prompt=request["prompt"], images=request.get("images") or None, system=request.get("system"),
            format=request.get("format"), stream=stream, **common,
        )
    elif kind == "chat":
        response = client.chat(messages=request["messages"], format=request.get("format"), stream=stream, **common)
    else:
        response = client.embed(input=request["prompt"], **common)
    if stream:
        return _relay(response, publish, kind)
    return response.model_dump(exclude_none=True)


def _relay(chunks: Iterator[Any], publish: Publish, kind: str) -> dict[str, Any]:
    parts, final = [], {}
    for chunk in chunks:
        final = chunk.model_dump(exclude_none=True)
        publish(final)
        parts.append(final.get("response") or final.get("message", {}).get("content") or "")
    if kind == "generate":
        final["response"] = "".join(parts)
    else:
        final["message"] = {"role": "assistant", "content": "".join(parts)}
    return final


def call_with_retries(client: ollama.Client, request: dict[str, Any], load_options: dict[str, Any],
                      settings: Settings, publish: Publish | None = None) -> dict[str, Any]:
    """Retry transient runtime errors with exponential backoff; raise JobFailed for the rest.

    A streaming call is not retried once a chunk went out: the reader would see it twice.
    """
    streamed = False

    def tracking(chunk: dict[str, Any]) -> None:
        nonlocal streamed
        streamed = True
        publish(chunk)

    delay = 0.5
    for attempt in range(settings.runtime_retries + 1):
        try:
            return call_runtime(client, request, load_options, tracking if publish else None)
        except Exception as exc:
            if not is_transient(exc) or streamed or attempt == settings.runtime_retries:
                message = exc.error if isinstance(exc, ollama.ResponseError) else str(exc)
                raise JobFailed(f"runtime error: {message}") from exc
            log.warning("runtime error on %s (attempt %d): %s; retrying in %.1fs",
                        request["model"], attempt + 1, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def build_result(response: dict[str, Any], request: dict[str, Any], *, job_id: str, node: str, worker: str,
                 queue_wait_s: float, load_s: float) -> dict[str, Any]:
    """The job's output plus timings (seconds, tokens and tokens/s)."""
    eval_count = int(response.get("eval_count") or 0)
    eval_s = (response.get("eval_duration") or 0) / NS
    timings = {
        "queue_wait_s": round(queue_wait_s, 4),
        "load_s": round(load_s, 4),  # the scheduler's load this job waited for
        "runtime_load_s": round((response.get("load_duration") or 0) / NS, 4),  # ~0: the model was resident
        "prompt_tokens": int(response.get("prompt_eval_count") or 0),
        "prompt_eval_s": round((response.get("prompt_eval_duration") or 0) / NS, 4),
        "eval_tokens": eval_count,
        "eval_s": round(eval_s, 4),
        "tokens_per_s": round(eval_count / eval_s, 2) if eval_s > 0 else 0.0,
        "runtime_s": round((response.get("total_duration") or 0) / NS, 4),
    }
    result: dict[str, Any] = {"id": job_id, "model": request["model"], "kind": request["kind"],
                              "node": node, "worker": worker, "timings": timings,
                              "runtime": {k: response[k] for k in RUNTIME_FIELDS if k in response}}
    if request["kind"] == "generate":
        result["response"] = response.get("response", "")
        result["done_reason"] = response.get("done_reason")
    elif request["kind"] == "chat":
        result["message"] = response.get("message", {})
        result["done_reason"] = response.get("done_reason")
    else:
        result["embeddings"] = response.get("embeddings", [])
    return result
