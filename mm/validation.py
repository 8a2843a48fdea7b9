"""Checks a job request before anything is enqueued. Pure: the caller supplies what is known."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from mm.errors import UnknownModel, ValidationError
from mm.keys import PRIORITIES
from mm.settings import Settings

KINDS = ("generate", "chat", "embed")
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

    def payload(self) -> dict[str, Any]:
        """The task's JSON kwargs."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], {})} | {"kind": self.kind}


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
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValidationError("options", f"must be an object, got {type(options).__name__}")
    checked = {}
    for key, value in options.items():
        expected = RUNTIME_OPTIONS.get(key) or LOAD_OPTIONS.get(key)
        if expected is None:
            raise ValidationError(f"options.{key}", "unknown option")
        checked[key] = _check_type(f"options.{key}", value, expected)
    if checked.get("num_predict", 0) < -2:
        raise ValidationError("options.num_predict", "must be -1 (unlimited), -2 (fill context) or >= 0")
    return checked


def check_images(images: Any, settings: Settings) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list):
        raise ValidationError("images", "must be a list of base64 strings")
    if len(images) > settings.max_images:
        raise ValidationError("images", f"at most {settings.max_images} images, got {len(images)}")
    for i, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise ValidationError(f"images[{i}]", "must be a non-empty base64 string")
        try:
            raw = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"images[{i}]", "is not valid base64") from None
        if len(raw) > settings.max_image_bytes:
            raise ValidationError(f"images[{i}]", f"decodes to {len(raw)} bytes, over {settings.max_image_bytes}")
    return images


def _check_text(field: str, text: Any, limit: int) -> str:
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValidationError(field, "must not be empty")
    if len(text) > limit:
        raise ValidationError(field, f"is {len(text)} characters, over the limit of {limit}")
    return text


def check_messages(messages: Any, settings: Settings) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages", "must be a non-empty list of {role, content} objects")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValidationError(f"messages[{i}]", "must be an object with role and content")
        if message.get("role") not in ROLES:
            raise ValidationError(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
        content = message.get("content", "")
        if not isinstance(content, str):
            raise ValidationError(f"messages[{i}].content", "must be a string")
        total += len(content)
        if "images" in message:
            check_images(message["images"], settings)
    if total == 0:
        raise ValidationError("messages", "all message contents are empty")
    if total > settings.max_prompt_chars:
        raise ValidationError("messages", f"total {total} characters, over the limit of {settings.max_prompt_chars}")
    return messages


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValidationError("metadata", "must be an object")
    try:
        size = len(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError("metadata", f"must be JSON-serializable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationError("metadata", f"is {size} bytes of JSON, over {MAX_METADATA_BYTES}")
    return metadata


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
) -> JobRequest:
    """Return a :class:`JobRequest`, or raise :class:`ValidationError` naming the bad field."""
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("model", "must be a non-empty string")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(PRIORITIES)}, got {priority!r}")
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
        else:
            prompt = _check_text("prompt", prompt, settings.max_prompt_chars)
    if system is not None:
        _check_text("system", system, settings.max_prompt_chars)
    if not isinstance(stream, bool):
        raise ValidationError("stream", "must be true or false")
    if stream and kind == "embed":
        raise ValidationError("stream", "embed jobs do not stream")
    if format is not None and not (format == "json" or isinstance(format, dict)):
        raise ValidationError("format", 'must be "json" or a JSON schema object')
    request = JobRequest(
        model=model,
        kind=kind,
        priority=priority,
        prompt=prompt,
        messages=messages,
        options=check_options(options),
        images=check_images(images, settings),
        metadata=check_metadata(metadata),
        format=format,
        system=system,
        stream=stream,
    )
    # Last, so that malformed requests are reported as such even for unknown models.
    if model not in known_models:
        raise UnknownModel(model)
    return request
