"""Checks a job request before anything is enqueued. Pure: the caller supplies what is known."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mm.errors import UnknownModel, ValidationError
from mm.keys import PRIORITIES
from mm.request_fields import (
    check_deadline,
    check_format,
    check_images,
    check_messages,
    check_metadata,
    check_options,
    check_text,
    check_tools,
    optional_bool,
    optional_str,
)
from mm.settings import Settings

KINDS = ("generate", "chat", "embed")
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
        raw=optional_bool("raw", given["raw"]),
        template=optional_str("template", given["template"]),
        suffix=optional_str("suffix", given["suffix"]),
        logprobs=optional_bool("logprobs", given["logprobs"]),
        truncate=optional_bool("truncate", given["truncate"]),
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
            prompt = [check_text(f"prompt[{i}]", p, settings.max_prompt_chars) for i, p in enumerate(prompt)]
            total = sum(len(p) for p in prompt)
            if total > settings.max_embed_chars:  # one job holds its slot for all of them
                raise ValidationError("prompt", f"{len(prompt)} inputs of {total} characters in all, over the limit "
                                                f"of {settings.max_embed_chars} (MM_MAX_EMBED_CHARS); split them "
                                                "over several jobs")
        else:
            prompt = check_text("prompt", prompt, settings.max_prompt_chars)
    if system is not None:
        check_text("system", system, settings.max_prompt_chars)
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
