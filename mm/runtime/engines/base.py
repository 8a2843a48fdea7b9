"""What every engine provides, and the plain data passed between the API, scheduler and engines."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from mm.runtime.catalog import ModelSpec

CONTEXT_EXCEEDED = "the input length exceeds the context length"  # Ollama's 400 for truncate: false


@dataclass
class Options:
    """The generation options the runtime understands (Ollama's ``options`` object)."""

    num_predict: int | None = None
    num_ctx: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None


@dataclass
class Message:
    """One chat message."""

    role: str
    content: str
    images: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_name: str = ""
    thinking: str = ""


@dataclass
class GenerationJob:
    """One generate or chat call, engine-neutral (Ollama's request fields)."""

    prompt: str = ""
    system: str = ""
    messages: list[Message] | None = None  # set for /api/chat
    options: Options = field(default_factory=Options)
    format: Any = None  # "json" or a JSON schema
    images: list[str] = field(default_factory=list)
    raw: bool = False
    suffix: str = ""
    template: str = ""
    context: list[int] = field(default_factory=list)  # a previous generate's context, to continue it
    think: bool | str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True  # keep the end of a prompt over num_ctx; False: refuse it

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def thinking(self) -> bool:
        """Whether the request asks the model to think (true, or a level)."""
        return bool(self.think)


class Thinking(list):
    """Pieces of a thinking model's reasoning, which an engine yields before its answer."""


@dataclass
class Stats:
    """The counters of the final response object (durations in seconds here, ns on the wire)."""

    prompt_eval_count: int
    prompt_eval_duration: float
    eval_count: int
    eval_duration: float
    done_reason: str  # "stop" or "length"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # Ollama's shape: [{"function": {...}}]
    context: list[int] | None = None  # generate's token context, for a next request to continue from


@dataclass
class Embedding:
    """Result of one embed call."""

    vectors: list[list[float]]
    prompt_eval_count: int


class Loaded(Protocol):
    """An engine's handle on a resident model."""

    size: int  # resident bytes (measured for llama)


LoadedT = TypeVar("LoadedT", bound=Loaded)


class Engine(Protocol[LoadedT]):
    """A way to serve models: load, generate, embed, unload, pull.

    ``generate`` yields lists of text pieces (one per token; a list lets a slow consumer take
    several tokens in one wake-up), :class:`Thinking` lists for a thinking model's reasoning, and
    finally a :class:`Stats`. A prompt over the context is cut to its end, or refused with
    :data:`CONTEXT_EXCEEDED` when the job says ``truncate: false``, before anything is yielded.
    ``LoadedT`` is the engine's own handle on a resident model.
    """

    name: str

    def estimate_size(self, spec: ModelSpec, num_ctx: int) -> int: ...

    async def load(self, spec: ModelSpec, num_ctx: int) -> LoadedT: ...

    async def unload(self, loaded: LoadedT) -> None: ...

    def generate(self, loaded: LoadedT, job: GenerationJob) -> AsyncGenerator[list[str] | Stats, None]: ...

    async def embed(self, loaded: LoadedT, inputs: list[str], options: Options, truncate: bool = True) -> Embedding: ...

    def pull(self, spec: ModelSpec) -> AsyncGenerator[dict[str, Any], None]: ...

    async def close(self) -> None: ...


class ScoresTokens(Protocol):
    """An engine that also scores what it generated (the sim engine): Ollama's ``logprobs``."""

    def logprobs(self, pieces: list[str], top: int) -> list[dict[str, Any]]: ...
