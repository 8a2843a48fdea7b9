"""Smoke tests: third-party Ollama clients, unmodified, against a live gateway.

``ollama`` (Python), ``llm`` with ``llm-ollama``, ``langchain-ollama`` and ``litellm`` each run a
short generate or chat, and embeddings where the client has them, through the gateway to real
Celery workers and the embedded runtime's sim engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ollama
import pytest
import redis

from tests.gateway_proc import ollama_stack
from tests.support import GB, sim_model

FAST = {"load_bandwidth": 4 * GB, "prompt_rate": 50_000, "eval_rate": 2_000}
CHAT_MODEL, EMBED_MODEL = "sim-a:1b", "sim-embed:1b"
MODELS = [
    sim_model(CHAT_MODEL, **FAST),
    sim_model(EMBED_MODEL, **FAST, kind="embed", embedding_dim=64),
]
MEMORY = 4 * GB
PREDICT = 4


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    with ollama_stack(tmp_path_factory.mktemp("ollama-clients"), redis_server.url, MODELS, MEMORY) as s:
        yield s


def test_the_ollama_client_generates_chats_and_embeds(gw):
    ollama_client = ollama.Client(host=gw.url, timeout=60)

    generated = ollama_client.generate(CHAT_MODEL, "Say hi", options={"num_predict": PREDICT})
    chatted = ollama_client.chat(CHAT_MODEL, [{"role": "user", "content": "Say hi"}], options={"num_predict": PREDICT})
    streamed = list(ollama_client.generate(CHAT_MODEL, "Say hi", stream=True, options={"num_predict": PREDICT}))
    embedded = ollama_client.embed(EMBED_MODEL, ["one", "two"])

    assert generated.done and generated.response and generated.eval_count == PREDICT
    assert chatted.message.role == "assistant" and chatted.message.content
    assert streamed[-1].done and "".join(c.response for c in streamed)
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 64
    assert CHAT_MODEL in {m.model for m in ollama_client.list().models}


def _llm(gw, tmp_path: Path, *args: str) -> str:
    env = os.environ | {"OLLAMA_HOST": gw.url, "LLM_USER_PATH": str(tmp_path / "llm")}
    done = subprocess.run([str(Path(sys.executable).parent / "llm"), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_llm_with_llm_ollama_prompts_and_embeds(gw, tmp_path):
    assert f"ollama/{CHAT_MODEL}" in _llm(gw, tmp_path, "models", "list")

    answer = _llm(gw, tmp_path, "prompt", "-m", f"ollama/{CHAT_MODEL}", "-o", "num_predict", str(PREDICT), "Say hi")
    vector = json.loads(_llm(gw, tmp_path, "embed", "-m", f"ollama/{EMBED_MODEL}", "-c", "hello"))

    assert answer.strip()
    assert len(vector) == 64


def test_langchain_ollama_invokes_chat_and_llm_and_embeds(gw):
    from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM

    chat = ChatOllama(model=CHAT_MODEL, base_url=gw.url, num_predict=PREDICT).invoke("Say hi")
    text = OllamaLLM(model=CHAT_MODEL, base_url=gw.url, num_predict=PREDICT).invoke("Say hi")
    vectors = OllamaEmbeddings(model=EMBED_MODEL, base_url=gw.url).embed_documents(["one", "two"])

    assert chat.content
    assert text
    assert len(vectors) == 2 and len(vectors[0]) == 64


def test_litellm_completes_through_generate_and_chat_and_embeds(gw, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    import litellm

    messages = [{"role": "user", "content": "Say hi"}]
    generated = litellm.completion(model=f"ollama/{CHAT_MODEL}", messages=messages, api_base=gw.url,
                                   max_tokens=PREDICT)
    chatted = litellm.completion(model=f"ollama_chat/{CHAT_MODEL}", messages=messages, api_base=gw.url,
                                 max_tokens=PREDICT)
    embedded = litellm.embedding(model=f"ollama/{EMBED_MODEL}", input=["one", "two"], api_base=gw.url)

    assert generated.choices[0].message.content
    assert chatted.choices[0].message.content
    assert len(embedded.data) == 2 and len(embedded.data[0]["embedding"]) == 64
