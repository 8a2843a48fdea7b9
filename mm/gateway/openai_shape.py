"""Pure conversions between OpenAI's API shapes and mm jobs and results (no I/O).

``job_kwargs`` turns an OpenAI request body (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``) into the arguments of :func:`mm.client.submit`; ``response_body`` turns a
finished job's result into OpenAI's answer (:mod:`mm.gateway.openai_stream` shapes streamed
chunks). The gateway's ``/v1`` routes and the Batch API both use them. Errors are
:class:`OpenAIError`, which carries OpenAI's error object.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import redis

from mm.errors import JobCancelled, JobExpired, JobFailed, JobLost, RedisFull, UnknownModel, ValidationError
from mm.gateway.base import ApiError
from mm.gateway.ollama_shape import durations
from mm.keys import PRIORITIES

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)
# OpenAI's sampling fields and the Ollama option each one becomes.
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
NO_NODE_MARKERS = ("more than the largest node", "not in the registry")  # the leader's rejections
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 431: "invalid_request_error"}
ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", 429: "rate_limit_exceeded",
               503: "service_unavailable", 504: "timeout"}


class OpenAIError(ApiError):
    """A request refused in OpenAI's shape: ``{"error": {message, type, param, code}}`` with ``status``.

    It is an :class:`~mm.gateway.base.ApiError`, so every gateway handler answers it with ``status``.
    """

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(status, param or "", message)
        self.type = type or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code if code is not None else ERROR_CODES.get(status)

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> OpenAIError:
    """A 400 ``invalid_request_error`` naming ``param``."""
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    """OpenAI's 404 for a model no runtime serves."""
    return OpenAIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def openai_error(exc: BaseException) -> OpenAIError:
    """mm's exceptions (validation, unknown model, a failed job, Redis down, ApiError) as OpenAI errors."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, UnknownModel):
        return model_not_found(exc.model)
    if isinstance(exc, ValidationError):
        return bad(exc.field, exc.message)
    if isinstance(exc, ApiError):
        if exc.status == 404 and exc.field == "model":
            return OpenAIError(404, exc.message, param="model", code="model_not_found")
        message = f"{exc.field}: {exc.message}" if exc.field and exc.field not in exc.message else exc.message
        return OpenAIError(exc.status, message, param=exc.field or None)
    if isinstance(exc, RedisFull):
        return OpenAIError(503, str(exc), code="overloaded")
    if isinstance(exc, JobLost):
        return OpenAIError(503, str(exc), code="job_lost")
    if isinstance(exc, JobFailed):
        return _job_failure(exc)
    if isinstance(exc, redis.RedisError):
        return OpenAIError(503, f"Redis unavailable: {exc}")
    return OpenAIError(500, "internal error")


def _job_failure(exc: JobFailed) -> OpenAIError:
    message = str(exc)
    if isinstance(exc, JobCancelled):
        return OpenAIError(409, message, code="job_cancelled")
    if isinstance(exc, JobExpired):
        return OpenAIError(504, message, code="job_expired")
    if exc.status is not None:  # the runtime refused the job: its status (400 stays 400)
        return OpenAIError(exc.status, message, code="model_not_found" if exc.status == 404 else None)
    if any(marker in message for marker in NO_NODE_MARKERS):
        return OpenAIError(503, message, code="no_node_for_model")
    return OpenAIError(502, message, code="job_failed")


def priority_of(body: dict[str, Any], header: str | None) -> str:
    """The job priority: the ``X-MM-Priority`` header, else the body's ``priority`` (``extra_body``), else normal."""
    value = header if header is not None and header.strip() else body.get("priority")
    if value is None:
        return "normal"
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in PRIORITIES:
        param = "X-MM-Priority" if header is not None and header.strip() else "priority"
        raise bad(param, f"must be one of {', '.join(PRIORITIES)}, not {value!r:.40}")
    return str(name)


def stream_of(body: dict[str, Any]) -> tuple[bool, bool]:
    """(``stream``, ``stream_options.include_usage``) of a request."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", f"must be a boolean, not {stream!r:.40}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "must be an object")
    usage = (options or {}).get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise bad("stream_options.include_usage", "must be a boolean")
    return bool(stream), bool(stream) and bool(usage)


def job_kwargs(endpoint: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model and the :func:`mm.client.submit` arguments (no priority, metadata or stream) of a request.

    Args:
        endpoint: ``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings``.
        body: the request's JSON object, as OpenAI's API defines it.

    Raises:
        OpenAIError: the request is invalid (400) or names an endpoint mm does not serve (404).
    """
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "you must provide a model parameter")
    if endpoint == CHAT:
        return model, _chat_kwargs(body)
    if endpoint == COMPLETIONS:
        return model, _completion_kwargs(body)
    if endpoint == EMBEDDINGS:
        return model, _embedding_kwargs(body)
    raise OpenAIError(404, f"no endpoint {endpoint}", param="endpoint", code="unknown_url")


def _options(body: dict[str, Any]) -> dict[str, Any] | None:
    """Ollama options from OpenAI's sampling fields (their types are checked by mm's validation)."""
    options = {ollama: body[name] for name, ollama in OPTION_FIELDS.items() if body.get(name) is not None}
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise bad("max_tokens", f"must be a positive integer, not {limit!r:.40}")
        options["num_predict"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            options["stop"] = stop
    elif stop is not None:
        raise bad("stop", "must be a string or a list of strings")
    return options or None


def _single_choice(body: dict[str, Any]) -> None:
    for name in ("n", "best_of"):
        n = body.get(name)
        if n is not None and n != 1:
            raise bad(name, f"mm answers one choice per request: {name} must be 1, not {n!r:.40}")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise bad("logprobs", "logprobs are not supported by mm's OpenAI API (use /api/chat or /api/generate)")


def _chat_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    _single_choice(body)
    kwargs: dict[str, Any] = {"kind": "chat", "messages": chat_messages(body.get("messages")),
                              "options": _options(body), "format": response_format(body.get("response_format"))}
    tools = chat_tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        kwargs["tools"] = tools
    return kwargs


def _completion_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    _single_choice(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "must be a non-empty string (or a list of one string); token arrays are not supported")
    if body.get("echo"):
        raise bad("echo", "echo is not supported")
    kwargs: dict[str, Any] = {"kind": "generate", "prompt": prompt, "options": _options(body)}
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise bad("suffix", "must be a string")
        if suffix:
            kwargs["suffix"] = suffix
    return kwargs


def _embedding_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("input")
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        pass
    elif not isinstance(text, str) or not text:
        raise bad("input", "must be a non-empty string or list of strings; token arrays are not supported")
    encoding_format(body)
    kwargs: dict[str, Any] = {"kind": "embed", "prompt": text}
    if body.get("dimensions") is not None:
        kwargs["dimensions"] = body["dimensions"]
    return kwargs


def encoding_format(body: dict[str, Any]) -> str:
    """An embeddings request's ``encoding_format``: ``float`` (default) or ``base64``."""
    value = body.get("encoding_format") or "float"
    if value not in ("float", "base64"):
        raise bad("encoding_format", f"must be 'float' or 'base64', not {value!r:.40}")
    return str(value)


def response_format(value: Any) -> str | dict[str, Any] | None:
    """Ollama's ``format`` for OpenAI's ``response_format``: text, json_object or json_schema."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema", "must be a JSON schema object")
        return schema
    raise bad("response_format", "must be {type: text | json_object | json_schema}")


def chat_tools(tools: Any, choice: Any) -> list[dict[str, Any]] | None:
    """Ollama's tools (the same shape as OpenAI's), narrowed by ``tool_choice``.

    ``none`` sends no tools; a ``{"type": "function", "function": {"name"}}`` choice sends only that one;
    ``auto`` and ``required`` send them all (Ollama has no way to force a call).
    """
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise bad("tools", "must be a list of tool objects")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        chosen = [t for t in tools if isinstance(t, dict) and (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise bad("tool_choice", f"names no tool of the request: {name!r:.40}")
        return chosen
    if choice not in (None, "auto", "required"):
        raise bad("tool_choice", "must be none, auto, required or {type: function, function: {name}}")
    return tools


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI's chat messages in Ollama's shape: content parts, images, tool calls and tool results."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of message objects")
    out = []
    names: dict[str, str] = {}  # tool call id -> the function it called (Ollama's tool_name)
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with role and content")
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        text, images = message_content(message.get("content"), f"{where}.content")
        converted: dict[str, Any] = {"role": role, "content": text}
        if images:
            converted["images"] = images
        if message.get("tool_calls"):
            converted["tool_calls"] = ollama_tool_calls(message["tool_calls"], f"{where}.tool_calls")
            names.update({c["id"]: c["function"]["name"] for c in converted["tool_calls"] if c.get("id")})
        call_id = message.get("tool_call_id")
        if role == "tool" and isinstance(call_id, str):
            converted["tool_call_id"] = call_id
            if call_id in names:
                converted["tool_name"] = names[call_id]
        out.append(converted)
    return out


def message_content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and base64 images: a string, or a list of text and ``image_url`` parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise bad(where, "must be a string or a list of content parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(image_data(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise bad(f"{where}[{j}]", "must be {type: text, text} or {type: image_url, image_url: {url}}")
    return "\n".join(texts), images


def image_data(image: Any, where: str) -> str:
    """The base64 payload of an ``image_url`` part; only ``data:`` URLs (mm fetches nothing)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise bad(where, "must be a data URL (data:image/...;base64,...); mm does not fetch images")
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise bad(where, "must be base64-encoded (data:image/...;base64,...)")
    return data


def ollama_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's OpenAI tool calls (arguments as a JSON string) in Ollama's shape (an object)."""
    if not isinstance(calls, list):
        raise bad(where, "must be a list of tool calls")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}[{j}].function", "must be an object {name, arguments}")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise bad(f"{where}[{j}].function.arguments", "must be a JSON object in a string") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise bad(f"{where}[{j}].function.arguments", "must be a JSON object")
        converted: dict[str, Any] = {"function": {"name": function["name"], "arguments": arguments or {}}}
        if isinstance(call.get("id"), str):
            converted["id"] = call["id"]
        out.append(converted)
    return out


def openai_tool_calls(calls: list[dict[str, Any]], job_id: str, indexed: bool = False) -> list[dict[str, Any]]:
    """Ollama's tool calls (arguments as an object) in OpenAI's shape (arguments as a JSON string)."""
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        call_id = call.get("id") or f"call_{job_id.replace('-', '')[:16]}_{i}"
        converted: dict[str, Any] = {"id": call_id, "type": "function",
                                     "function": {"name": function.get("name", ""),
                                                  "arguments": json.dumps(function.get("arguments") or {})}}
        out.append({"index": i, **converted} if indexed else converted)
    return out


def finish_reason(done_reason: str | None, tool_calls: bool = False) -> str:
    """OpenAI's finish_reason for Ollama's done_reason: ``length``, ``tool_calls`` or ``stop``."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(result: dict[str, Any]) -> dict[str, int]:
    """OpenAI's usage from a job result (or a final stream chunk): prompt and completion tokens."""
    counts = durations(result) if "timings" in result or "runtime" in result else {
        "prompt_eval_count": int(result.get("prompt_eval_count") or 0),
        "eval_count": int(result.get("eval_count") or 0)}
    prompt, completion = counts["prompt_eval_count"], counts["eval_count"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response_body(endpoint: str, model: str, result: dict[str, Any], job_id: str, created: int,
                  *, encoding: str = "float") -> dict[str, Any]:
    """The non-streaming OpenAI answer for a finished job's ``result``.

    Args:
        endpoint: ``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings``.
        model: the model the request named.
        result: what the job returned (response or message, embeddings, done_reason, timings, runtime).
        job_id: mm's job id (the answer's id is ``chatcmpl-<job id>`` or ``cmpl-<job id>``).
        created: the answer's Unix time in seconds.
        encoding: embeddings only: ``float`` or ``base64`` (the request's ``encoding_format``).
    """
    if endpoint == EMBEDDINGS:
        return embeddings_body(model, result, encoding)
    if endpoint == COMPLETIONS:
        choice: dict[str, Any] = {"index": 0, "text": result.get("response", ""), "logprobs": None,
                                  "finish_reason": finish_reason(result.get("done_reason"))}
        return {"id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [choice], "usage": usage(result), "system_fingerprint": "mm"}
    if endpoint != CHAT:
        raise OpenAIError(404, f"no endpoint {endpoint}", param="endpoint", code="unknown_url")
    message = result.get("message") or {}
    calls = message.get("tool_calls") or []
    answer: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ("" if not calls else None)}
    if calls:
        answer["tool_calls"] = openai_tool_calls(calls, job_id)
    if message.get("thinking"):
        answer["reasoning"] = message["thinking"]
    choice = {"index": 0, "message": answer, "logprobs": None,
              "finish_reason": finish_reason(result.get("done_reason"), bool(calls))}
    return {"id": f"chatcmpl-{job_id}", "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "usage": usage(result), "system_fingerprint": "mm"}


def embeddings_body(model: str, result: dict[str, Any], encoding: str = "float") -> dict[str, Any]:
    """OpenAI's embeddings list; ``base64`` packs each vector as little-endian float32, as OpenAI does."""
    data = []
    for i, vector in enumerate(result.get("embeddings") or []):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = usage(result)["prompt_tokens"]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def decode_base64_embedding(value: str) -> list[float]:
    """A ``base64`` embedding back to floats (the inverse of ``embeddings_body``'s packing)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def model_object(name: str, created: float) -> dict[str, Any]:
    """One model in OpenAI's shape."""
    return {"id": name, "object": "model", "created": int(created), "owned_by": "mm"}
