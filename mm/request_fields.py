"""Checks of one job-request field each (options, images, messages, tools, format, deadline,
metadata), each raising :class:`~mm.errors.ValidationError` that names the field. Pure; used by
:mod:`mm.validation` and the gateway."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from mm.errors import ValidationError
from mm.schema_check import check_schema
from mm.settings import Settings

ROLES = ("system", "user", "assistant", "tool")
MAX_METADATA_BYTES = 16 * 1024

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


def check_text(field: str, text: Any, limit: int) -> str:
    """A non-empty string of at most ``limit`` characters, in valid Unicode."""
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValidationError(field, "must not be empty")
    if len(text) > limit:
        raise ValidationError(field, f"is {len(text)} characters, over the limit of {limit}")
    check_unicode(field, text)
    return text


def optional_str(field: str, value: Any) -> str | None:
    """A string field where ``null`` and ``""`` mean unset, as in Ollama's Go structs."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    check_unicode(field, value)
    return value


def optional_bool(field: str, value: Any) -> bool | None:
    """A boolean field where ``null`` means unset."""
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
