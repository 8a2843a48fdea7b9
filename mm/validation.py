"""Checks a job request before anything is enqueued. Pure: the caller supplies what is known."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from mm.errors import UnknownModel, ValidationError
from mm.keys import PRIORITIES
from mm.schema_check import check_schema
from mm.settings import Settings

KINDS = ("generate", "chat", "embed")
ROLES = ("system", "user", "assistant", "tool")
MAX_METADATA_BYTES = 16 * 1024
THINK_LEVELS = ("low", "medium", "high", "max")
MAX_TOP_LOGPROBS = 20  # Ollama's bound
# Request fields each kind takes besides its input (Ollama's GenerateRequest, ChatRequest, EmbedRequest).
KIND_FIELDS = {
    "generate": {"suffix", "template", "raw", "context", "think", "logprobs", "top_logprobs", "truncate"},
    "chat": {"tools", "think", "logprobs", "top_logprobs", "truncate"},
    "embed": {"dimensions", "truncate"},
}
# The capability (as the runtime's /api/show lists it) that each kind or field needs.
KIND_CAPABILITY = {"generate": "completion", "chat": "completion", "embed": "embedding"}
FIELD_CAPABILITY = {"tools": "tools", "think": "thinking", "suffix": "insert"}

# Ollama's options and their types. Load-time options are fixed per model by the registry,
# so a client cannot force a reload; they are accepted here and overridden by the worker.
RUNTIME_OPTIONS: dict[str, type] = {
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "tfs_z": float, "typical_p": float, "repeat_last_n": int, "temperature": float,
    "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float, "mirostat": int,
    "mirostat_tau": float, "mirostat_eta": float, "penalize_newline": bool, "stop": list,
}
LOAD_OPTIONS: dict[str, type] = {
    "numa": bool, "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "low_vram": bool,
    "f16_kv": bool, "vocab_only": bool, "use_mmap": bool, "use_mlock": bool, "num_thread": int,
}
# A lower bound of a prompt's tokens under any common tokenizer: no token spans whitespace, and a
# run of letters/digits (with its contractions: "don't" may be two tokens, "don" and "'t") or of
# punctuation is at least one token.
_TOKEN_RUN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]+")


@dataclass(frozen=True)
class ModelFacts:
    """What validation knows of one model (the registry's entry); 0 or None means unknown, not checked.

    Attributes:
        num_ctx: the context mm loads the model with (a request's ``options.num_ctx`` cannot change it).
        context_length: the model's own context, from the runtime's ``/api/show``.
        capabilities: the runtime's ``/api/show`` capabilities (completion, embedding, tools, ...).
        max_num_predict: this model's ``num_predict`` ceiling (0: ``MM_MAX_NUM_PREDICT``).
    """

    num_ctx: int = 0
    context_length: int = 0
    capabilities: frozenset[str] | None = None
    max_num_predict: int = 0

    @property
    def context(self) -> int:
        """Tokens the runtime can hold for a job: num_ctx, capped by the model's own context length."""
        known = [n for n in (self.num_ctx, self.context_length) if n > 0]
        return min(known) if known else 0


@dataclass(frozen=True)
class JobRequest:
    """A validated job, ready to be sent."""

    model: str
    kind: str
    priority: str
    prompt: str | list[str] | None
    messages: list[dict[str, Any]] | None
    options: dict[str, Any]
    images: list[str]
    metadata: dict[str, Any]
    format: str | dict[str, Any] | None = None
    system: str | None = None
    stream: bool = False
    # Ollama's request fields, passed to the runtime as given (None: not set).
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    raw: bool | None = None
    template: str | None = None
    suffix: str | None = None
    context: list[int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    dimensions: int | None = None
    truncate: bool | None = None
    warnings: tuple[str, ...] = ()
    cache: bool = False  # answer from the result cache when deterministic (mm.result_cache)
    deadline_s: float | None = None  # not started this long after its submission, it expires (mm.deadlines)

    def payload(self) -> dict[str, Any]:
        """The task's JSON kwargs."""
        payload = {k: v for k, v in self.__dict__.items() if v not in (None, [], {}, ())} | {"kind": self.kind}
        if not self.cache:
            payload.pop("cache")
        if self.warnings:
            payload["warnings"] = list(self.warnings)
        return payload


def _check_type(field: str, value: Any, expected: type) -> Any:
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is list:
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValidationError(field, f"must be {'a list of strings' if expected is list else expected.__name__}, "
                                     f"got {type(value).__name__} {value!r:.60}")
    return value


def check_options(options: Any) -> dict[str, Any]:
    """Ollama's ``options``, type-checked; a ``null`` value is ignored, as Ollama does."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValidationError("options", f"must be an object, got {type(options).__name__}")
    checked = {}
    for key, value in options.items():
        expected = RUNTIME_OPTIONS.get(key) or LOAD_OPTIONS.get(key)
        if expected is None:
            raise ValidationError(f"options.{key}", "unknown option")
        if value is None:  # clients (langchain-ollama) send every option, unset ones as null
            continue
        checked[key] = _check_type(f"options.{key}", value, expected)
    if checked.get("num_predict", 0) < -2:
        raise ValidationError("options.num_predict", "must be -1 (unlimited), -2 (fill context) or >= 0")
    return checked


def check_images(images: Any, settings: Settings, field: str = "images") -> list[str]:
    """A list of base64 images within the count and size limits."""
    if images is None:
        return []
    if not isinstance(images, list):
        raise ValidationError(field, "must be a list of base64 strings")
    if len(images) > settings.max_images:
        raise ValidationError(field, f"at most {settings.max_images} images, got {len(images)}")
    for i, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise ValidationError(f"{field}[{i}]", "must be a non-empty base64 string")
        try:
            raw = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"{field}[{i}]", "is not valid base64") from None
        if len(raw) > settings.max_image_bytes:
            raise ValidationError(f"{field}[{i}]", f"decodes to {len(raw)} bytes, over {settings.max_image_bytes}")
    return images


def check_unicode(field: str, value: Any) -> None:
    """Refuse a string (anywhere inside ``value``) that is not valid Unicode, e.g. a lone surrogate "\\ud800".

    JSON can carry one as an escape; no runtime can encode it, so it would fail every attempt later.
    """
    stack = [(field, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValidationError(where, f"is not valid Unicode: a lone surrogate {item[exc.start]!r} at "
                                             f"character {exc.start}") from None
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((where, key))
                stack.append((f"{where}.{key}", sub))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", sub) for i, sub in enumerate(item))


def _check_json(field: str, value: Any) -> None:
    """Refuse what JSON cannot carry to the runtime (NaN, infinities, non-JSON types)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, f"must be plain JSON: {exc}") from None


def _check_text(field: str, text: Any, limit: int) -> str:
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValidationError(field, "must not be empty")
    if len(text) > limit:
        raise ValidationError(field, f"is {len(text)} characters, over the limit of {limit}")
    check_unicode(field, text)
    return text


def _optional_str(field: str, value: Any) -> str | None:
    """A string field where ``null`` and ``""`` mean unset, as in Ollama's Go structs."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    check_unicode(field, value)
    return value


def _optional_bool(field: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValidationError(field, f"must be true or false, got {value!r:.40}")


def _check_tool_calls(field: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise ValidationError(field, f"must be a list of {{function: {{name, arguments}}}} objects, "
                                     f"got {type(calls).__name__} {calls!r:.40}")
    for i, call in enumerate(calls):
        where = f"{field}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise ValidationError(f"{where}.function", "must be an object {name, arguments}")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise ValidationError(f"{where}.function.name", "must be a non-empty string")
        if function.get("arguments") is not None and not isinstance(function["arguments"], dict):
            raise ValidationError(f"{where}.function.arguments",
                                  f"must be an object, got {type(function['arguments']).__name__} "
                                  f"(a JSON string of arguments is OpenAI's shape, not Ollama's)")
        index = function.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise ValidationError(f"{where}.function.index", "must be an integer")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise ValidationError(f"{where}.id", "must be a string")


def check_messages(messages: Any, settings: Settings) -> list[dict[str, Any]]:
    """Chat messages in Ollama's shape: role, content and the optional images, thinking, tool fields."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages", "must be a non-empty list of {role, content} objects")
    total = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValidationError(where, "must be an object with role and content")
        if message.get("role") not in ROLES:
            raise ValidationError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ValidationError(f"{where}.content", "must be a string")
        total += len(content or "")
        for key in ("thinking", "tool_name", "tool_call_id"):
            if message.get(key) is not None and not isinstance(message[key], str):
                raise ValidationError(f"{where}.{key}", f"must be a string, got {type(message[key]).__name__}")
        if message.get("images") is not None:
            check_images(message["images"], settings, f"{where}.images")
        if message.get("tool_calls") is not None:
            _check_tool_calls(f"{where}.tool_calls", message["tool_calls"])
        check_unicode(where, message)
        _check_json(where, message)
    if total == 0:
        raise ValidationError("messages", "all message contents are empty")
    if total > settings.max_prompt_chars:
        raise ValidationError("messages", f"total {total} characters, over the limit of {settings.max_prompt_chars}")
    return messages


def check_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Ollama's ``tools``: a list of ``{type: "function", function: {name, description, parameters}}``."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise ValidationError("tools", f"must be a list of tool objects, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValidationError(where, "must be an object {type: \"function\", function: {...}}")
        if tool.get("type", "function") != "function":
            raise ValidationError(f"{where}.type", f'must be "function", got {tool.get("type")!r:.40}')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValidationError(f"{where}.function", "must be an object {name, description, parameters}")
        if not isinstance(function.get("name"), str) or not function["name"].strip():
            raise ValidationError(f"{where}.function.name", "must be a non-empty string")
        if function.get("description") is not None and not isinstance(function["description"], str):
            raise ValidationError(f"{where}.function.description", "must be a string")
        parameters = function.get("parameters")
        if parameters is not None:
            problem = check_schema(parameters)
            if problem:
                raise ValidationError(f"{where}.function.parameters", problem.split(": ", 1)[-1])
    check_unicode("tools", tools)
    _check_json("tools", tools)
    return tools


def check_format(format: Any) -> str | dict[str, Any] | None:
    """``"json"``, a valid JSON schema, or nothing (``null`` / ``""``)."""
    if format is None or format == "":
        return None
    if format == "json":
        return format
    if not isinstance(format, dict):
        raise ValidationError("format", 'must be "json" or a JSON schema object')
    problem = check_schema(format)
    if problem:
        raise ValidationError("format", f"is not a valid JSON schema: {problem}")
    check_unicode("format", format)
    _check_json("format", format)
    return format


def check_deadline(deadline_s: Any, field: str = "deadline_s") -> float | None:
    """Seconds after its submission by which a job must have started (None: no deadline)."""
    if deadline_s is None:
        return None
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not math.isfinite(deadline_s):
        raise ValidationError(field, f"must be a number of seconds, got {type(deadline_s).__name__} {deadline_s!r:.40}")
    if deadline_s <= 0:
        raise ValidationError(field, f"must be more than 0 seconds, got {deadline_s!r:.40}")
    return float(deadline_s)


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Any JSON object up to MAX_METADATA_BYTES."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValidationError("metadata", "must be an object")
    check_unicode("metadata", metadata)
    try:
        size = len(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError("metadata", f"must be JSON-serializable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationError("metadata", f"is {size} bytes of JSON, over {MAX_METADATA_BYTES}")
    return metadata


def min_tokens(text: str) -> int:
    """A lower bound of ``text``'s token count under any common tokenizer (see ``_TOKEN_RUN``)."""
    return sum(1 for _ in _TOKEN_RUN.finditer(text))


@dataclass
class _Extras:
    """The Ollama request fields beyond mm's own, checked."""

    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    raw: bool | None = None
    template: str | None = None
    suffix: str | None = None
    context: list[int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    dimensions: int | None = None
    truncate: bool | None = None


def _check_extras(kind: str, system: str | None, given: dict[str, Any]) -> _Extras:
    for name, value in given.items():
        if value not in (None, "", [], False, 0) and name not in KIND_FIELDS[kind]:
            takers = [k for k, fields in KIND_FIELDS.items() if name in fields]
            raise ValidationError(name, f"{kind} jobs do not take {name} (only {' and '.join(takers)} jobs do)")
    x = _Extras(
        tools=check_tools(given["tools"]),
        raw=_optional_bool("raw", given["raw"]),
        template=_optional_str("template", given["template"]),
        suffix=_optional_str("suffix", given["suffix"]),
        logprobs=_optional_bool("logprobs", given["logprobs"]),
        truncate=_optional_bool("truncate", given["truncate"]),
    )
    think = given["think"]
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise ValidationError("think", f"must be true, false or one of {', '.join(THINK_LEVELS)}, got {think!r:.40}")
    x.think = think
    context = given["context"]
    if context is not None and context != []:
        if not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
            raise ValidationError("context", "must be a list of integers (the context a previous generate returned)")
        x.context = context
    top = given["top_logprobs"]
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValidationError("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}, got {top!r:.40}")
        x.top_logprobs = top or None
    dimensions = given["dimensions"]
    if dimensions is not None and dimensions != 0:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0:
            raise ValidationError("dimensions", f"must be a positive integer, got {dimensions!r:.40}")
        x.dimensions = dimensions
    if x.raw and (x.template or system or x.context):
        raise ValidationError("raw", "raw mode does not support template, system, or context")
    return x


def _check_model(model: str, kind: str, facts: ModelFacts, extras: _Extras, options: dict[str, Any],
                 texts: list[tuple[str, str]]) -> list[str]:
    """Refuse what this model cannot do; return warnings for what the worker will change."""
    if facts.capabilities is not None:
        caps = facts.capabilities
        if KIND_CAPABILITY[kind] not in caps:
            what = "embeddings" if kind == "embed" else kind
            raise ValidationError("kind", f"{model} does not support {what} (its capabilities: "
                                          f"{', '.join(sorted(caps)) or 'none'})")
        for name, capability in FIELD_CAPABILITY.items():
            value = getattr(extras, name)
            if value and capability not in caps:
                raise ValidationError(name, f"{model} does not support {capability}")
    context = facts.context
    if context and extras.truncate is False:
        for field, text in texts:
            tokens = min_tokens(text)
            if tokens > context:
                raise ValidationError(field, f"is at least {tokens} tokens, over {model}'s context of {context} "
                                             f"tokens, and truncate is false")
    warnings = []
    requested = options.get("num_ctx")
    if requested is not None and facts.num_ctx and requested != facts.num_ctx:
        warnings.append(f"options.num_ctx {requested} was ignored: {model} runs with num_ctx {facts.num_ctx}, "
                        f"fixed per model so that no request forces a reload")
    return warnings


def _prompt_texts(kind: str, prompt: Any, messages: Any, system: str | None) -> list[tuple[str, str]]:
    """(field, text) of each input whose tokens must fit the context."""
    if kind == "chat":
        joined = "\n".join(m.get("content") or "" for m in messages)
        return [("messages", f"{system}\n{joined}" if system else joined)]
    if kind == "embed":
        return [(f"prompt[{i}]", p) for i, p in enumerate(prompt)] if isinstance(prompt, list) else [("prompt", prompt)]
    return [("prompt", f"{system}\n{prompt}" if system else prompt)]


def _check_names(model: Any, kind: Any, priority: Any) -> None:
    """Refuse an empty model name, or a kind or priority mm does not have."""
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("model", "must be a non-empty string")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(PRIORITIES)}, got {priority!r}")


def _check_input(kind: str, prompt: Any, messages: Any, system: Any, settings: Settings) -> tuple[Any, Any]:
    """Return the checked prompt and messages: chat jobs take messages, the others a prompt (embed: or a list)."""
    if kind == "chat":
        if prompt is not None:
            raise ValidationError("prompt", "chat jobs take messages, not a prompt")
        messages = check_messages(messages, settings)
    else:
        if messages is not None:
            raise ValidationError("messages", f"{kind} jobs take a prompt, not messages")
        if kind == "embed" and isinstance(prompt, list):
            if not prompt:
                raise ValidationError("prompt", "must not be an empty list")
            prompt = [_check_text(f"prompt[{i}]", p, settings.max_prompt_chars) for i, p in enumerate(prompt)]
            total = sum(len(p) for p in prompt)
            if total > settings.max_embed_chars:  # one job holds its slot for all of them
                raise ValidationError("prompt", f"{len(prompt)} inputs of {total} characters in all, over the limit "
                                                f"of {settings.max_embed_chars} (MM_MAX_EMBED_CHARS); split them "
                                                "over several jobs")
        else:
            prompt = _check_text("prompt", prompt, settings.max_prompt_chars)
    if system is not None:
        _check_text("system", system, settings.max_prompt_chars)
    return prompt, messages


def _check_num_predict(model: str, options: dict[str, Any], facts: ModelFacts | None, settings: Settings) -> None:
    """Refuse a num_predict over the model's ceiling (its registry entry's, else MM_MAX_NUM_PREDICT)."""
    ceiling = (facts.max_num_predict if facts else 0) or settings.max_num_predict
    if ceiling > 0 and options.get("num_predict", 0) > ceiling:
        raise ValidationError("options.num_predict", f"{options['num_predict']} is over {model}'s ceiling of "
                                                     f"{ceiling} tokens (MM_MAX_NUM_PREDICT, or the model's "
                                                     f"max_num_predict in the registry)")


def validate(
    model: Any,
    *,
    known_models: frozenset[str] | set[str],
    settings: Settings,
    prompt: Any = None,
    messages: Any = None,
    kind: Any = "generate",
    priority: Any = "normal",
    options: Any = None,
    images: Any = None,
    metadata: Any = None,
    format: Any = None,
    system: Any = None,
    stream: Any = False,
    facts: ModelFacts | None = None,
    tools: Any = None, think: Any = None, raw: Any = None, template: Any = None, suffix: Any = None,
    context: Any = None, logprobs: Any = None, top_logprobs: Any = None, dimensions: Any = None,
    truncate: Any = None,
    cache: Any = None,
    deadline_s: Any = None,
) -> JobRequest:
    """Return a :class:`JobRequest`, or raise :class:`ValidationError` naming the bad field.

    Args:
        facts: what the registry knows of the model (context, capabilities, num_predict ceiling);
            without it only the settings' limits are checked, and the runtime checks the rest.
        tools, think, raw, template, suffix, context, logprobs, top_logprobs, dimensions, truncate:
            Ollama's request fields, as its API defines them; each kind takes its own.
        cache: answer a deterministic request from the result cache (None: ``MM_CACHE_DEFAULT``).
        deadline_s: seconds after submission by which the job must start, else it expires (None: never).
    """
    _check_names(model, kind, priority)
    prompt, messages = _check_input(kind, prompt, messages, system, settings)
    if not isinstance(stream, bool):
        raise ValidationError("stream", "must be true or false")
    if stream and kind == "embed":
        raise ValidationError("stream", "embed jobs do not stream")
    format = check_format(format)
    extras = _check_extras(kind, system, {
        "tools": tools, "think": think, "raw": raw, "template": template, "suffix": suffix, "context": context,
        "logprobs": logprobs, "top_logprobs": top_logprobs, "dimensions": dimensions, "truncate": truncate,
    })
    if cache is not None and not isinstance(cache, bool):
        raise ValidationError("cache", f"must be true or false, got {cache!r:.40}")
    checked_options = check_options(options)
    _check_num_predict(model, checked_options, facts, settings)
    warnings: list[str] = []
    if facts is not None:
        warnings = _check_model(model, kind, facts, extras, checked_options,
                                _prompt_texts(kind, prompt, messages, system))
    request = JobRequest(model=model, kind=kind, priority=priority, prompt=prompt, messages=messages,
                         options=checked_options, images=check_images(images, settings),
                         metadata=check_metadata(metadata), format=format, system=system, stream=stream,
                         warnings=tuple(warnings), cache=settings.cache_default if cache is None else cache,
                         deadline_s=check_deadline(deadline_s), **extras.__dict__)
    # Last, so that malformed requests are reported as such even for unknown models.
    if model not in known_models:
        raise UnknownModel(model)
    return request
