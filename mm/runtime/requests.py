"""Parse and validate request bodies the way Ollama's Go server does (same 400 messages)."""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from dataclasses import dataclass, field
from typing import Any

from mm.runtime.durations import parse_keep_alive
from mm.runtime.engines.base import GenerationJob, Message, Options
from mm.runtime.errors import BadRequest


def _go_type(value: Any) -> str:
    """The JSON kind Go's decoder names in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode(body: bytes, struct: str) -> dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        BadRequest: empty body, invalid JSON, or JSON that is not an object.
    """
    if not body or not body.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"json: cannot unmarshal {_go_type(data)} into Go value of type api.{struct}")
    return data


class _Fields:
    """Typed access to one decoded object; ``null`` reads as absent, as in Go."""

    def __init__(self, data: dict[str, Any], struct: str):
        self.data, self.struct = data, struct

    def _fail(self, key: str, value: Any, want: str) -> BadRequest:
        return BadRequest(
            f"json: cannot unmarshal {_go_type(value)} into Go struct field {self.struct}.{key} of type {want}")

    # The methods str, bool and int hide the builtins in the class body: the annotations after
    # them name the builtins as builtins.str, builtins.bool and builtins.int.
    def str(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._fail(key, value, "string")
        return value

    def bool(self, key: builtins.str, default: bool | None) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, value, "bool")
        return value

    def strings(self, key: builtins.str) -> list[builtins.str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad = value if not isinstance(value, list) else next(v for v in value if not isinstance(v, str))
            raise self._fail(key, bad, "string" if isinstance(value, list) else "[]string")
        return value

    def object(self, key: builtins.str) -> dict[builtins.str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, value, "map[string]interface {}")
        return value

    def model(self) -> builtins.str:
        name = self.str("model") or self.str("name")
        if not name.strip():
            raise BadRequest("model is required")
        return name

    def keep_alive(self) -> float | None:
        """Seconds, or None when the request sets none (a loaded model then keeps its own)."""
        if self.data.get("keep_alive") is None:
            return None
        try:
            return parse_keep_alive(self.data.get("keep_alive"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def images(self, key: builtins.str = "images") -> list[builtins.str]:
        images = self.strings(key)
        for image in images:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("illegal base64 data in images") from None
        return images

    def int(self, key: builtins.str) -> int:
        value = self.data.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, "int")
        return value

    def ints(self, key: builtins.str) -> list[builtins.int]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self._fail(key, value, "[]int")
        return value

    def objects(self, key: builtins.str, want: builtins.str) -> list[dict[builtins.str, Any]]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._fail(key, value, want)
        return value

    def think(self) -> builtins.bool | builtins.str | None:
        """Ollama's ``think``: a bool or a level (``low``, ``medium``, ``high``, ``max``)."""
        value = self.data.get("think")
        if value is None or isinstance(value, bool):
            return value
        if value in ("low", "medium", "high", "max"):
            return value
        raise BadRequest(f"invalid think value: {json.dumps(value)} (must be \"high\", \"medium\", \"low\", "
                         "\"max\", true, or false)")

    def top_logprobs(self) -> builtins.int:
        value = self.int("top_logprobs")
        if not 0 <= value <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        return value

    def format(self) -> Any:
        value = self.data.get("format")
        if value in (None, ""):
            return None
        if value == "json" or isinstance(value, dict):
            return value
        raise BadRequest(f'invalid format: {json.dumps(value)}: expected "json" or a valid JSON schema')


_INT_OPTIONS = ("num_predict", "num_ctx", "seed", "top_k")
_FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "repeat_penalty")


def parse_options(raw: dict[str, Any]) -> Options:
    """Ollama's ``options``: numbers for numeric options, a string array for ``stop``.

    Unknown options are ignored (Ollama logs and ignores them).
    """
    opts = Options()
    for key in _INT_OPTIONS + _FLOAT_OPTIONS:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "integer" if key in _INT_OPTIONS else "float32"
            raise BadRequest(f'option "{key}" must be of type {kind}')
        setattr(opts, key, int(value) if key in _INT_OPTIONS else float(value))
    if opts.num_ctx is not None and opts.num_ctx <= 0:
        raise BadRequest('option "num_ctx" must be a positive integer')
    stop = raw.get("stop")
    if isinstance(stop, str):
        opts.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        opts.stop = list(stop)
    elif stop is not None:
        raise BadRequest('option "stop" must be of an array of strings')
    return opts


@dataclass
class InferenceRequest:
    """A validated /api/generate or /api/chat body."""

    model: str
    job: GenerationJob
    stream: bool
    keep_alive: float | None  # None: the request set none
    nothing_to_do: bool  # empty prompt / no messages: just load (or unload with keep_alive 0)


def parse_generate(body: bytes) -> InferenceRequest:
    """Validate an /api/generate body."""
    f = _Fields(decode(body, "GenerateRequest"), "GenerateRequest")
    model, keep_alive = f.model(), f.keep_alive()
    job = GenerationJob(prompt=f.str("prompt"), system=f.str("system"), options=parse_options(f.object("options")),
                        format=f.format(), images=f.images(), raw=bool(f.bool("raw", False)), suffix=f.str("suffix"),
                        template=f.str("template"), context=f.ints("context"), think=f.think(),
                        logprobs=bool(f.bool("logprobs", False)), top_logprobs=f.top_logprobs(),
                        truncate=bool(f.bool("truncate", True)))
    if job.raw and (job.template or job.system or job.context):
        raise BadRequest("raw mode does not support template, system, or context")
    return InferenceRequest(model, job, bool(f.bool("stream", True)), keep_alive, nothing_to_do=not job.prompt)


def parse_chat(body: bytes) -> InferenceRequest:
    """Validate an /api/chat body."""
    f = _Fields(decode(body, "ChatRequest"), "ChatRequest")
    model, keep_alive = f.model(), f.keep_alive()
    raw_messages = f.data.get("messages")
    if raw_messages is not None and not isinstance(raw_messages, list):
        raise f._fail("messages", raw_messages, "[]api.Message")
    messages = []
    for item in raw_messages or []:
        if not isinstance(item, dict):
            raise f._fail("messages", item, "api.Message")
        m = _Fields(item, "Message")
        calls = m.objects("tool_calls", "[]api.ToolCall")
        for call in calls:
            if not isinstance(call.get("function"), dict) or not isinstance(call["function"].get("arguments", {}),
                                                                             dict):
                raise m._fail("tool_calls", call.get("function"), "api.ToolCallFunction")
        messages.append(Message(role=(m.str("role") or "user").lower(), content=m.str("content"), images=m.images(),
                                tool_calls=calls, tool_name=m.str("tool_name"), thinking=m.str("thinking")))
    tools = f.objects("tools", "api.Tools")
    job = GenerationJob(messages=messages, options=parse_options(f.object("options")), format=f.format(),
                        tools=tools, think=f.think(), logprobs=bool(f.bool("logprobs", False)),
                        top_logprobs=f.top_logprobs(), truncate=bool(f.bool("truncate", True)))
    return InferenceRequest(model, job, bool(f.bool("stream", True)), keep_alive, nothing_to_do=not messages)


@dataclass
class EmbedRequest:
    """A validated /api/embed (or legacy /api/embeddings) body."""

    model: str
    inputs: list[str]
    keep_alive: float | None  # None: the request set none
    options: Options = field(default_factory=Options)
    truncate: bool = True
    dimensions: int = 0  # cut each vector to this many dimensions (then renormalised); 0: all


def parse_embed(body: bytes, legacy: bool = False) -> EmbedRequest:
    """Validate an /api/embed body (``input``: a string or a list of strings)."""
    struct = "EmbeddingRequest" if legacy else "EmbedRequest"
    f = _Fields(decode(body, struct), struct)
    model, keep_alive = f.model(), f.keep_alive()
    if legacy:
        inputs = [f.str("prompt")] if f.str("prompt") else []
    else:
        raw = f.data.get("input")
        if raw is None or raw == "":
            inputs = []
        elif isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        else:
            raise BadRequest("invalid input type")
    return EmbedRequest(model, inputs, keep_alive, parse_options(f.object("options")),
                        truncate=bool(f.bool("truncate", True)), dimensions=0 if legacy else f.int("dimensions"))


def parse_named(body: bytes, struct: str) -> tuple[str, bool]:
    """Validate an /api/show or /api/pull body: ``(model, stream)``."""
    f = _Fields(decode(body, struct), struct)
    f.bool("verbose", False), f.bool("insecure", False)
    return f.model(), bool(f.bool("stream", True))
