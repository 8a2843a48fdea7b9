"""The same end-to-end path once with real tokens: gemma3 270M through llama.cpp."""

import openai
import pytest

import mm
from tests.gateway_proc import start_gateway
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

pytestmark = pytest.mark.llama

MODELS = [
    {"name": "gemma3:270m", "engine": "llama"},
    sim_model("sim-a:1b", load_bandwidth=4 * GB),
]


def test_gemma3_answers_with_real_text_through_the_scheduler(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="llama", models=MODELS, memory=4_000_000_000, timeout=120)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4_000_000_000)
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=1)
        stack.wait_ready(["gemma3:270m", "sim-a:1b"], ["w1"])

        generate = mm.submit("gemma3:270m", "The capital of France is", options={"num_predict": 12, "seed": 1})
        chat = mm.submit("gemma3:270m", kind="chat", messages=[{"role": "user", "content": "Say hello."}],
                         options={"num_predict": 12, "seed": 1}, priority="high")
        embed = mm.submit("gemma3:270m", "embed me", kind="embed")

        text = generate.get(timeout=180)
        reply = chat.get(timeout=180)
        vectors = embed.get(timeout=180)["embeddings"]

        assert text["response"].strip() and text["timings"]["eval_tokens"] > 0
        # The rate the runtime reported, however slow a busy machine made it (speed is bench/'s to measure).
        timings = text["timings"]
        assert timings["eval_s"] > 0 and timings["tokens_per_s"] == pytest.approx(
            timings["eval_tokens"] / timings["eval_s"], rel=0.02, abs=0.01)
        assert reply["message"]["content"].strip()
        assert len(vectors) == 1 and len(vectors[0]) > 100
        assert "gemma3:270m" in stack.resident()
    finally:
        stack.stop()
        runtime.stop()


def test_the_openai_sdk_gets_real_gemma3_text_through_the_gateway(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="llama", models=MODELS[:1], memory=4_000_000_000, timeout=120)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4_000_000_000)
    gateway = None
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=1)
        stack.wait_ready(["gemma3:270m"], ["w1"])
        gateway, url = start_gateway(tmp_path, stack.env, "gateway")
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=180, max_retries=0)

        answer = sdk.chat.completions.create(model="gemma3:270m", max_tokens=12, seed=1,
                                             messages=[{"role": "user", "content": "Say hello."}])

        assert answer.choices[0].message.content.strip()
        assert answer.usage.completion_tokens > 0 and answer.choices[0].finish_reason in ("stop", "length")
    finally:
        if gateway is not None:
            gateway.stop()
        stack.stop()
        runtime.stop()
