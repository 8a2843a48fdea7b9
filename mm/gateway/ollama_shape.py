"""Pure conversions between Ollama's request/response shapes and mm jobs and results.

Durations follow Ollama's meaning as seen by the client: ``total_duration`` runs from the
request's arrival to the answer (mm's queue wait, which includes any scheduler load, plus the
runtime's own total); ``load_duration`` is the load this job waited for (mm's scheduler load plus
any load inside the runtime). Counts and the prompt/eval durations are the runtime's own.
"""

from __future__ import annotations

from typing import Any

from mm.gateway.base import ApiError
from mm.keys import PRIORITIES
from mm.request_fields import check_deadline

NS = 1_000_000_000
PRIORITY_HEADER = "X-MM-Priority"
CACHE_HEADER = "X-MM-Cache"
DEADLINE_HEADER = "X-MM-Deadline"
CACHE_VALUES = {"use": True, "on": True, "off": False, "bypass": False}
# Ollama's request fields passed on to the job (and so to the runtime) as given; mm.submit's
# validation checks them. Any other field is ignored, as Ollama ignores it.
OLLAMA_FIELDS = {
    "generate": ("suffix", "template", "raw", "context", "think", "logprobs", "top_logprobs", "truncate"),
    "chat": ("tools", "think", "logprobs", "top_logprobs", "truncate"),
    "embed": ("dimensions", "truncate"),
}
# Answer fields the runtime may add (thinking models, logprobs, generate's context) and mm's warnings.
EXTRA_ANSWER_FIELDS = ("thinking", "context", "logprobs", "warnings")


def priority_from(header: str | None) -> str:
    """The job priority named by the ``X-MM-Priority`` header (default ``normal``)."""
    if header is None or header.strip() == "":
        return "normal"
    value = header.strip().lower()
    if value not in PRIORITIES:
        raise ApiError(400, PRIORITY_HEADER, f"must be one of {', '.join(PRIORITIES)}, not {header!r:.40}")
    return value


def cache_from(header: str | None) -> bool | None:
    """Whether the ``X-MM-Cache`` header lets the result cache answer (``use``) or not (``off``);
    None without it (``MM_CACHE_DEFAULT`` decides)."""
    if header is None or header.strip() == "":
        return None
    value = CACHE_VALUES.get(header.strip().lower())
    if value is None:
        raise ApiError(400, CACHE_HEADER, f"must be use or off, not {header!r:.40}")
    return value


def deadline_from(header: str | None) -> float | None:
    """The job's ``deadline_s`` named by the ``X-MM-Deadline`` header (seconds); None without it."""
    if header is None or header.strip() == "":
        return None
    try:
        value = float(header.strip())
    except ValueError:
        raise ApiError(400, DEADLINE_HEADER, f"must be a number of seconds, not {header!r:.40}") from None
    return check_deadline(value, DEADLINE_HEADER)


def ollama_fields(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The request's Ollama fields for ``kind`` that are set (``null`` is unset, as in Ollama)."""
    return {name: body[name] for name in OLLAMA_FIELDS[kind] if body.get(name) is not None}


def _extras(result: dict[str, Any], fields: tuple[str, ...] = EXTRA_ANSWER_FIELDS) -> dict[str, Any]:
    return {k: result[k] for k in fields if result.get(k)}


def stream_flag(body: dict[str, Any], default: bool = True) -> bool:
    value = body.get("stream", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, "stream", f"must be true or false, not {value!r:.40}")
    return value


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(400, "model", "model is required")
    if not isinstance(model, str):
        raise ApiError(400, "model", f"must be a string, not {type(model).__name__}")
    return model


def format_value(body: dict[str, Any]) -> Any:
    value = body.get("format")
    return None if value in (None, "") else value


def ns(seconds: float) -> int:
    return round(max(0.0, float(seconds)) * NS)


def durations(result: dict[str, Any]) -> dict[str, int]:
    """Ollama's duration and count fields from a job result: the runtime's own final object (kept
    by the worker under ``runtime``), else the result's rounded ``timings``."""
    t = result.get("timings") or {}
    raw = result["runtime"] if isinstance(result.get("runtime"), dict) else {}
    queue_wait = ns(t.get("queue_wait_s", 0.0))
    scheduler_load = ns(t.get("load_s", 0.0))
    runtime_total = int(raw.get("total_duration") or ns(t.get("runtime_s", 0.0)))
    runtime_load = int(raw.get("load_duration") or ns(t.get("runtime_load_s", 0.0)))
    return {
        "total_duration": queue_wait + runtime_total,
        "load_duration": scheduler_load + runtime_load,
        "prompt_eval_count": int(raw.get("prompt_eval_count") or t.get("prompt_tokens", 0)),
        "prompt_eval_duration": int(raw.get("prompt_eval_duration") or ns(t.get("prompt_eval_s", 0.0))),
        "eval_count": int(raw.get("eval_count") or t.get("eval_tokens", 0)),
        "eval_duration": int(raw.get("eval_duration") or ns(t.get("eval_s", 0.0))),
    }


def created_at(result: dict[str, Any], default: str) -> str:
    """When the runtime created the answer (its own ``created_at``), else ``default``."""
    runtime = result["runtime"] if isinstance(result.get("runtime"), dict) else {}
    value = runtime.get("created_at")
    return value if isinstance(value, str) and value else default


def generate_response(model: str, result: dict[str, Any], created_at: str) -> dict[str, Any]:
    """The non-streaming ``/api/generate`` answer."""
    return {"model": model, "created_at": created_at, "response": result.get("response", ""), "done": True,
            "done_reason": result.get("done_reason") or "stop", **durations(result), **_extras(result)}


def chat_response(model: str, result: dict[str, Any], created_at: str) -> dict[str, Any]:
    """The non-streaming ``/api/chat`` answer."""
    message = dict(result.get("message") or {})
    message.setdefault("role", "assistant")
    message.setdefault("content", "")
    return {"model": model, "created_at": created_at, "message": message, "done": True,
            "done_reason": result.get("done_reason") or "stop", **durations(result),
            **_extras(result, ("logprobs", "warnings"))}


def embed_response(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """The ``/api/embed`` answer."""
    d = durations(result)
    return {"model": model, "embeddings": result.get("embeddings", []), "total_duration": d["total_duration"],
            "load_duration": d["load_duration"], "prompt_eval_count": d["prompt_eval_count"],
            **_extras(result, ("warnings",))}


def final_chunks(kind: str, model: str, result: dict[str, Any], created_at: str) -> list[dict[str, Any]]:
    """A whole answer as stream chunks: one with the text, then the final ``done`` one (used when
    the worker cannot stream tokens)."""
    if kind == "chat":
        final = chat_response(model, result, created_at)
        text = {"model": model, "created_at": created_at, "message": final["message"], "done": False}
        final["message"] = {"role": final["message"]["role"], "content": ""}
    else:
        final = generate_response(model, result, created_at)
        text = {"model": model, "created_at": created_at, "response": final["response"], "done": False,
                **_extras(final, ("thinking", "logprobs"))}
        final["response"] = ""
        final.pop("thinking", None)
        final.pop("logprobs", None)
    return [text, final]


def adjust_final_chunk(chunk: dict[str, Any], queue_wait_s: float, scheduler_load_s: float) -> dict[str, Any]:
    """Add mm's queue wait and scheduler load to a streamed final chunk's runtime durations."""
    if not chunk.get("done"):
        return chunk
    chunk = dict(chunk)
    chunk["total_duration"] = int(chunk.get("total_duration") or 0) + ns(queue_wait_s)
    chunk["load_duration"] = int(chunk.get("load_duration") or 0) + ns(scheduler_load_s)
    return chunk
