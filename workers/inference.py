"""Running one job against the runtime: the Ollama call, retries, and the result with its timings."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import ollama

from mm.errors import JobCancelled, JobFailed
from mm.settings import Settings

if TYPE_CHECKING:
    import pydantic  # ollama's responses are pydantic models

log = logging.getLogger("mm.worker")

NS = 1e9
# The runtime's own final fields, kept so a proxy can answer exactly as Ollama would.
RUNTIME_FIELDS = ("model", "created_at", "done", "done_reason", "total_duration", "load_duration",
                  "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


# Failures worth another attempt: the runtime was unreachable or said it is busy or overloaded.
TRANSIENT_STATUS = (429, 502, 503, 504)
# Request fields passed to the runtime as Ollama's API defines them, per kind.
FIELDS = {
    "generate": ("prompt", "images", "system", "format", "suffix", "template", "raw", "context", "think",
                 "logprobs", "top_logprobs", "truncate"),
    "chat": ("messages", "tools", "format", "think", "logprobs", "top_logprobs", "truncate"),
    "embed": ("dimensions", "truncate"),
}
ENDPOINTS: dict[str, tuple[str, type[pydantic.BaseModel]]] = {
    "generate": ("/api/generate", ollama.GenerateResponse), "chat": ("/api/chat", ollama.ChatResponse),
    "embed": ("/api/embed", ollama.EmbedResponse)}


def is_transient(exc: Exception) -> bool:
    """Connection errors and 429/502/503/504 answers are worth retrying; nothing else is.

    A 4xx is the runtime refusing this request and a 500 its failing on it: another attempt
    gets the same answer. A call that timed out is not retried either: the runtime may still be
    working on it, and a fresh attempt would start the whole job again.
    """
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code in TRANSIENT_STATUS
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True  # never reached the runtime
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return False
    return isinstance(exc, (ConnectionError, httpx.TransportError))


def failure(exc: Exception, timeout_s: float) -> JobFailed:
    """The :class:`JobFailed` a runtime error ends the job with, carrying the runtime's status."""
    if isinstance(exc, ollama.ResponseError):
        return JobFailed(f"runtime error: {exc.error}", status=exc.status_code if exc.status_code > 0 else None)
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)) and not is_transient(exc):
        return JobFailed(f"runtime error: the call timed out after {timeout_s:g}s (MM_RUNTIME_TIMEOUT_S); "
                         "not retried, as the runtime may still be running it", status=504)
    return JobFailed(f"runtime error: {exc}")


Publish = Callable[[dict[str, Any]], None]
STOPPED = "cancelled: stopped while running"


def request_body(request: dict[str, Any], load_options: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The runtime request in Ollama's wire shape; keep_alive -1 so that only mm unloads."""
    kind = request["kind"]
    body: dict[str, Any] = {"model": request["model"], "keep_alive": -1, "stream": stream,
                            "options": {**request.get("options", {}), **load_options}}
    if kind == "embed":
        body["input"] = request["prompt"]
    for name in FIELDS[kind]:
        if request.get(name) not in (None, [], ""):
            body[name] = request[name]
    return body


def call_runtime(client: ollama.Client, request: dict[str, Any], load_options: dict[str, Any],
                 publish: Publish | None = None, stop: threading.Event | None = None,
                 timeout_s: float | None = None) -> dict[str, Any]:
    """One Ollama call for ``request``.

    Generate and chat always stream from the runtime, so that the call can be given up between two
    chunks: once ``stop`` is set the response is closed (the runtime stops generating) and
    :class:`JobCancelled` raised. With ``publish`` each chunk is published as it comes. Either way
    the final object is returned with the whole text, as the runtime answers a call without streaming.
    A call still streaming ``timeout_s`` after it began times out (``httpx.ReadTimeout``), as one
    whose answer took that long would.
    """
    kind = request["kind"]
    path, shape = ENDPOINTS[kind]
    streamed = kind != "embed"  # an embedding comes whole
    body = request_body(request, load_options, streamed)
    # Through the client's request method rather than generate()/chat()/embed(), which drop the
    # fields their version does not know (truncate, and newer ones): the runtime gets them all.
    if streamed:
        chunks = _chunks(client, shape, path, body)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            return _relay(chunks, publish, kind, stop, deadline)
        finally:
            chunks.close()  # closes the response: the runtime sees its client gone and stops generating
    return client._request(shape, "POST", path, json=body, stream=False).model_dump(exclude_none=True)


def _chunks(client: ollama.Client, shape: type[pydantic.BaseModel], path: str,
            body: dict[str, Any]) -> Generator[pydantic.BaseModel, None, None]:
    """The runtime's streamed answer, chunk by chunk (as the ollama client's streaming call, except
    that an error sent in the stream carries the status Ollama would answer it with unstreamed)."""
    with client._client.stream("POST", path, json=body) as response:
        if response.is_error:
            response.read()
            raise ollama.ResponseError(response.text, response.status_code)
        for line in response.iter_lines():
            part = json.loads(line)
            if error := part.get("error"):
                # Ollama answers a call without streaming with this status, or 500 when the line has none.
                status = part.get("status")
                raise ollama.ResponseError(error, status if isinstance(status, int) else 500)
            yield shape(**part)


def _relay(chunks: Iterator[pydantic.BaseModel], publish: Publish | None, kind: str,
           stop: threading.Event | None = None, deadline: float | None = None) -> dict[str, Any]:
    parts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise JobCancelled(STOPPED)
        if deadline is not None and time.monotonic() > deadline:
            raise httpx.ReadTimeout("the runtime was still answering at the call's timeout")
        final = chunk.model_dump(exclude_none=True)
        if publish is not None:
            publish(final)
        piece = final if kind == "generate" else final.get("message", {})
        parts.append(piece.get("response" if kind == "generate" else "content") or "")
        thinking.append(piece.get("thinking") or "")
        tool_calls.extend(piece.get("tool_calls") or [])
        logprobs.extend(final.get("logprobs") or [])
    if kind == "generate":
        final["response"] = "".join(parts)
        whole = final
    else:
        whole = final["message"] = {"role": "assistant", "content": "".join(parts)}
    if any(thinking):
        whole["thinking"] = "".join(thinking)
    if tool_calls:
        whole["tool_calls"] = tool_calls
    if logprobs:
        final["logprobs"] = logprobs
    return final


class NotLoaded(Exception):
    """The runtime answers again but no longer holds the job's model (it restarted): a retry would make
    it load the model behind the scheduler's back, where the scheduler may have placed others."""


def holds(client: ollama.Client, model: str) -> bool:
    """False only if the runtime answers ``/api/ps`` without ``model`` (unknown counts as held)."""
    try:
        response = client._client.get("/api/ps", timeout=5.0)
        response.raise_for_status()
        return any(model in (m.get("model"), m.get("name")) for m in response.json().get("models", []))
    except Exception:  # still down: the retry meets that again
        return True


def call_with_retries(client: ollama.Client, request: dict[str, Any], load_options: dict[str, Any],
                      settings: Settings, publish: Publish | None = None,
                      stop: threading.Event | None = None) -> dict[str, Any]:
    """Retry transient runtime errors with exponential backoff; raise JobFailed for the rest, and
    :class:`JobCancelled` once ``stop`` is set.

    A streaming call is not retried once a chunk went out: the reader would see it twice. Nor is one
    whose model the runtime no longer holds (:class:`NotLoaded`: put the job back instead).
    """
    streamed = False

    def tracking(chunk: dict[str, Any]) -> None:
        nonlocal streamed
        streamed = True
        assert publish is not None  # passed on only with a publisher
        publish(chunk)

    delay = 0.5
    for attempt in range(settings.runtime_retries + 1):
        try:
            return call_runtime(client, request, load_options, tracking if publish else None, stop,
                                settings.runtime_timeout_s)
        except JobCancelled:
            raise
        except Exception as exc:
            if not is_transient(exc) or streamed or attempt == settings.runtime_retries:
                raise failure(exc, settings.runtime_timeout_s) from exc
            log.warning("runtime error on %s (attempt %d): %s; retrying in %.1fs",
                        request["model"], attempt + 1, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
            if not holds(client, request["model"]):
                raise NotLoaded(f"{request['model']} is no longer loaded in the runtime") from exc
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
        result.update({k: response[k] for k in ("thinking", "context") if response.get(k)})
    elif request["kind"] == "chat":
        result["message"] = response.get("message", {})
        result["done_reason"] = response.get("done_reason")
    else:
        result["embeddings"] = response.get("embeddings", [])
    if response.get("logprobs"):
        result["logprobs"] = response["logprobs"]
    if request.get("warnings"):
        result["warnings"] = request["warnings"]
    return result
