"""One contract, three targets: the sim engine, the llama engine, and a real Ollama (OLLAMA_HOST).

Everything here goes through the official ``ollama`` client or raw HTTP, so the same tests show
that an unmodified Ollama client cannot tell the embedded runtime from Ollama.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest

from tests.procs import wait_for
from tests.runtime_server import RuntimeProc, start_runtime

SIM_MODELS = [
    {"name": "sim-contract:1b", "size": 200_000_000, "load_bandwidth": 2_000_000_000, "prompt_rate": 5000,
     "eval_rate": 400, "parallel": 4, "embedding_dim": 256},
]
OPTS = {"seed": 7, "temperature": 0, "num_predict": 8}


@dataclass
class Target:
    """Where the contract runs: a URL, a chat/generate model and an embedding model."""

    url: str
    model: str
    embed_model: str

    @property
    def client(self) -> ollama.Client:
        return ollama.Client(host=self.url, timeout=120)

    def resident(self) -> list[str]:
        return [m.model for m in self.client.ps().models]


@pytest.fixture(scope="module", params=[
    pytest.param("sim", id="sim"),
    pytest.param("llama", id="llama", marks=pytest.mark.llama),
    pytest.param("ollama", id="ollama", marks=pytest.mark.ollama),
])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    kind = request.param
    if kind == "ollama":
        host = os.environ.get("OLLAMA_HOST")
        if not host:
            pytest.skip("OLLAMA_HOST is not set: no real Ollama to hold the runtime to")
        url = host if "://" in host else f"http://{host}"
        model = os.environ.get("OLLAMA_TEST_MODEL", "gemma3:270m")
        yield Target(url, model, os.environ.get("OLLAMA_TEST_EMBED_MODEL", model))
        return
    runtime: RuntimeProc
    if kind == "sim":
        runtime = start_runtime(tmp_path_factory.mktemp("sim"), models=SIM_MODELS)
        model = SIM_MODELS[0]["name"]
    else:
        runtime = start_runtime(tmp_path_factory.mktemp("llama"), engine="llama", timeout=120)
        model = "gemma3:270m"
    try:
        yield Target(runtime.url, model, model)
    finally:
        runtime.stop()


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


# -- discovery ---------------------------------------------------------------------------------

def test_root_and_version_answer_like_ollama(target: Target) -> None:
    root = httpx.get(target.url + "/", timeout=10)
    head = httpx.head(target.url + "/", timeout=10)
    version = httpx.get(target.url + "/api/version", timeout=10)

    assert root.status_code == 200 and root.text == "Ollama is running"
    assert head.status_code == 200
    assert isinstance(version.json()["version"], str)


def test_tags_list_the_model_with_details(target: Target) -> None:
    models = {m.model: m for m in target.client.list().models}

    assert target.model in models
    entry = models[target.model]
    assert entry.size and entry.size > 0
    assert entry.digest and len(entry.digest) == 64
    assert entry.details and entry.details.family and entry.details.format == "gguf"


def test_show_describes_the_model(target: Target) -> None:
    shown = target.client.show(target.model)

    assert shown.details and shown.details.family
    assert shown.modelinfo and "general.architecture" in shown.modelinfo


# -- load, ps, unload, expiry -------------------------------------------------------------------

def test_an_empty_prompt_loads_the_model_and_ps_lists_it(target: Target) -> None:
    loaded = target.client.generate(target.model, "", keep_alive="5m")
    running = {m.model: m for m in target.client.ps().models}

    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    entry = running[target.model]
    assert entry.name == target.model
    assert entry.size and entry.size > 0 and entry.size_vram is not None
    assert entry.digest and len(entry.digest) == 64
    assert entry.details and entry.details.family
    assert entry.context_length and entry.context_length > 0
    assert entry.expires_at is not None
    remaining = entry.expires_at - datetime.now(UTC)
    assert timedelta(minutes=4) < remaining <= timedelta(minutes=5, seconds=5)


def test_empty_messages_load_the_model_for_chat(target: Target) -> None:
    loaded = target.client.chat(target.model, messages=[])

    assert loaded.done and loaded.done_reason == "load"
    assert target.model in target.resident()


def test_keep_alive_zero_with_nothing_to_generate_unloads(target: Target) -> None:
    target.client.generate(target.model, "")
    assert target.model in target.resident()

    unloaded = target.client.generate(target.model, "", keep_alive=0)

    assert unloaded.done and unloaded.done_reason == "unload"
    wait_for(lambda: target.model not in target.resident(), timeout=30, what="the model to leave ps")


def test_keep_alive_forever_shows_a_far_expiry(target: Target) -> None:
    target.client.generate(target.model, "", keep_alive=-1)

    entry = next(m for m in target.client.ps().models if m.model == target.model)
    assert entry.expires_at and entry.expires_at.year > datetime.now().year + 100
    target.client.generate(target.model, "", keep_alive=0)


def test_a_short_keep_alive_expires_after_the_request(target: Target) -> None:
    target.client.generate(target.model, "", keep_alive=0)
    wait_for(lambda: target.model not in target.resident(), timeout=30, what="a clean start")

    target.client.generate(target.model, "", keep_alive="2s")
    loaded_at = time.monotonic()

    assert target.model in target.resident()
    wait_for(lambda: target.model not in target.resident(), timeout=30, what="keep_alive 2s to expire")
    assert time.monotonic() - loaded_at >= 1.5


# -- generate, stream, chat ---------------------------------------------------------------------

def test_generate_returns_text_and_nanosecond_timings(target: Target) -> None:
    reply = target.client.generate(target.model, "Write one sentence about the sea.", options=OPTS)

    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.response
    assert 1 <= reply.eval_count <= OPTS["num_predict"]
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(reply[name], int) and reply[name] >= 0, name
    assert reply.total_duration >= reply.prompt_eval_duration + reply.eval_duration > 0
    datetime.fromisoformat(reply.created_at.replace("Z", "+00:00"))


def test_streaming_yields_pieces_then_one_final_object_with_the_same_text(target: Target) -> None:
    prompt = "Write one sentence about mountains."
    whole = target.client.generate(target.model, prompt, options=OPTS)

    parts = list(target.client.generate(target.model, prompt, options=OPTS, stream=True))

    assert len(parts) >= 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].eval_count == whole.eval_count and parts[-1].done_reason == whole.done_reason
    assert "".join(p.response for p in parts) == whole.response


def test_chat_answers_as_the_assistant(target: Target) -> None:
    messages = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "Name a colour."}]

    reply = target.client.chat(target.model, messages=messages, options=OPTS)
    parts = list(target.client.chat(target.model, messages=messages, options=OPTS, stream=True))

    assert reply.done and reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count and reply.eval_count >= 1
    assert parts[-1].done and all(p.message.role == "assistant" for p in parts)
    assert "".join(p.message.content for p in parts) == reply.message.content


# -- embeddings ---------------------------------------------------------------------------------

def test_embed_a_string_gives_one_unit_vector(target: Target) -> None:
    result = target.client.embed(target.embed_model, "Why is the sky blue?")

    assert result.model == target.embed_model
    assert len(result.embeddings) == 1 and len(result.embeddings[0]) > 8
    assert abs(_norm(result.embeddings[0]) - 1.0) < 1e-3
    assert result.prompt_eval_count and result.prompt_eval_count > 0


def test_embed_a_list_gives_one_vector_per_input_deterministically(target: Target) -> None:
    inputs = ["the sky is blue", "grass is green", "the sky is blue"]

    vectors = target.client.embed(target.embed_model, inputs).embeddings

    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1
    same = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    other = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    assert same > 0.9999 and other < 0.9999


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["generate", "chat", "embed", "show"])
def test_unknown_models_are_404(target: Target, call: str) -> None:
    client, name = target.client, "no-such-model:7b"
    with pytest.raises(ollama.ResponseError) as caught:
        if call == "generate":
            client.generate(name, "hi")
        elif call == "chat":
            client.chat(name, messages=[{"role": "user", "content": "hi"}])
        elif call == "embed":
            client.embed(name, "hi")
        else:
            client.show(name)

    assert caught.value.status_code == 404
    assert "not found" in caught.value.error


@pytest.mark.parametrize("path,body", [
    ("/api/generate", b"{not json"),
    ("/api/generate", b""),
    ("/api/generate", {"prompt": "hi"}),
    ("/api/generate", {"model": "MODEL", "prompt": 5}),
    ("/api/generate", {"model": "MODEL", "prompt": "hi", "stream": "yes"}),
    ("/api/generate", {"model": "MODEL", "prompt": "hi", "keep_alive": "soon"}),
    ("/api/chat", {"model": "MODEL", "messages": "hi"}),
    ("/api/chat", {"model": "MODEL", "messages": [{"role": "user", "content": 3}]}),
    ("/api/embed", {"model": "MODEL", "input": 5}),
], ids=["bad-json", "empty", "no-model", "prompt-number", "stream-string", "bad-keep-alive",
        "messages-string", "content-number", "input-number"])
def test_malformed_bodies_are_400_and_the_server_keeps_serving(target: Target, path: str, body: object) -> None:
    if isinstance(body, dict):
        body = {k: target.model if v == "MODEL" else v for k, v in body.items()}
        response = httpx.post(target.url + path, json=body, timeout=30)
    else:
        response = httpx.post(target.url + path, content=body, timeout=30)

    assert response.status_code == 400
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert httpx.get(target.url + "/api/version", timeout=10).status_code == 200
    assert target.client.generate(target.model, "Say hi.", options=OPTS).done
