"""Input that passes validation must not fail later, and Ollama's fields flow to the runtime.

Real redis-server, real Celery workers, the embedded runtime's sim engine and ``mm gateway`` as a
subprocess. What the model cannot do is a 400 before anything is enqueued (the node learned the
model's capabilities and context from ``/api/show``); what the runtime refuses ends the job FAILED
at once with the runtime's status, which the gateway repeats (400 stays 400); nothing but
connection errors and 429/502/503/504 is retried.
"""

from __future__ import annotations

import json
import math
import sys
import time

import httpx
import ollama
import pytest
import redis

import mm
from mm import keys, registry
from mm.errors import JobFailed
from tests.procs import Proc, free_port, wait_for
from tests.stack import REPO, sim_node
from tests.support import GB

NUM_CTX = 64
CAPABLE = "sim-capable:1b"  # tools, thinking, insert
PLAIN = "sim-plain:1b"
FAILING = "sim-fail:1b"  # every generation fails after two tokens: the runtime answers 500
EMBEDDER = "sim-embed:1b"
FAST = {"size": GB, "load_bandwidth": 10 * GB, "prompt_rate": 50_000, "eval_rate": 2_000}
MODELS = [
    {"name": CAPABLE, **FAST, "capabilities": ["tools", "thinking", "insert"]},
    {"name": PLAIN, **FAST},
    {"name": FAILING, **FAST, "fail_after": 2},
    {"name": EMBEDDER, **FAST, "kind": "embed", "embedding_dim": 32},
]
OPTS = {"num_predict": 4, "seed": 1}
WEATHER = {"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]}}}
# At least 60 tokens for any tokenizer (within the context of 64), but 100 for the sim's, which
# counts each dot and the chat template: validation cannot know it is too long; the runtime can.
DENSE = "x.. " * 30
LONG = " ".join(f"w{i}" for i in range(200))  # over the context for any tokenizer


class Node:
    """A sim runtime, a gpu-broker, two model-workers (default retries: 3) and a gateway."""

    def __init__(self, stack, gateway: Proc, url: str):
        self.stack, self.gateway, self.url = stack, gateway, url

    def post(self, path: str, body: dict) -> httpx.Response:
        # json.dumps escapes a lone surrogate ("\\ud800"), as a client's JSON can carry one
        return httpx.post(self.url + path, content=json.dumps({"stream": False} | body), timeout=60,
                          headers={"Content-Type": "application/json"})

    def runtime_calls(self, path: str) -> int:
        """Requests the runtime served on ``path``, other than the node agent's loads."""
        return sum(1 for line in self.stack.runtime.output().splitlines()
                   if f"POST {path} " in line and "done_reason=load" not in line)

    def worker_logs(self) -> str:
        return "".join(p.output() for name, p in self.stack.procs.items() if name.startswith("w"))


@pytest.fixture(scope="module")
def node(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checks")
    redis.Redis.from_url(redis_server.url).flushall()
    with sim_node(tmp, redis_server.url, MODELS, 6 * GB, workers=("w1", "w2"), default_num_ctx=NUM_CTX,
                  safety_margin=0) as stack:
        port = free_port()
        gateway = Proc([sys.executable, "-c", "from mm.cli import main; main()", "gateway", "--port", str(port)],
                       log=tmp / "gateway.log", env=stack.env | {"PYTHONUNBUFFERED": "1"}, cwd=str(REPO))
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/api/health", timeout=2).status_code == 200, 30, what="gateway")
            # The node agent learns each model's capabilities and context from the runtime's /api/show.
            wait_for(lambda: all((e := registry.get(stack.r, m["name"])) and e.capabilities for m in MODELS), 30,
                     what="capabilities in the registry")
            yield Node(stack, gateway, url)
        finally:
            gateway.stop()


def test_the_registry_holds_what_the_runtime_shows(node):
    capable, embedder = registry.get(node.stack.r, CAPABLE), registry.get(node.stack.r, EMBEDDER)
    assert capable.capabilities == sorted(["completion", "embedding", "tools", "thinking", "insert"])
    assert embedder.capabilities == ["embedding"] and capable.context_length == 4096 and capable.num_ctx == NUM_CTX


def test_a_runtime_refusal_fails_the_job_at_once_and_the_gateway_repeats_its_400(node):
    # Given a prompt that passes validation but that the runtime finds over the context, truncate false
    before = node.runtime_calls("/api/generate")
    started = time.monotonic()
    reply = node.post("/api/generate", {"model": PLAIN, "prompt": DENSE, "truncate": False})
    # Expect the runtime's 400 and message, the job FAILED with that status, and one runtime call only
    assert reply.status_code == 400, reply.text
    assert "the input length exceeds the context length" in reply.json()["error"]
    record = node.stack.r.hgetall(keys.job(reply.headers["X-MM-Job-Id"]))
    assert record[b"status"] == b"failed" and record[b"error_status"] == b"400"
    view = httpx.get(f"{node.url}/api/job/{reply.headers['X-MM-Job-Id']}", timeout=10).json()
    assert view["status"] == "failed" and view["error_status"] == 400
    wait_for(lambda: node.runtime_calls("/api/generate") > before, 10, what="the runtime's log line")
    assert node.runtime_calls("/api/generate") == before + 1
    assert "retrying" not in node.worker_logs() and time.monotonic() - started < 10
    # Streamed, the refusal comes before any chunk: the same status, not an error line in a 200
    streamed = node.post("/api/generate", {"model": PLAIN, "prompt": DENSE, "truncate": False, "stream": True})
    assert streamed.status_code == 400 and "exceeds the context length" in streamed.json()["error"]


def test_a_runtime_failure_through_mm_submit_is_not_retried_and_carries_its_status(node):
    before = node.runtime_calls("/api/generate")
    job = mm.submit(FAILING, "hi", options=OPTS)
    with pytest.raises(JobFailed, match="simulated failure") as failed:
        job.get(timeout=60)
    assert failed.value.status == 500
    assert job.record()["error_status"] == "500"
    assert node.runtime_calls("/api/generate") == before + 1 and "retrying" not in node.worker_logs()


def test_a_prompt_over_the_context_is_refused_before_enqueue_only_when_truncate_is_false(node):
    refused = node.post("/api/generate", {"model": PLAIN, "prompt": LONG, "truncate": False})
    truncated = node.post("/api/generate", {"model": PLAIN, "prompt": LONG, "options": OPTS})
    assert refused.status_code == 400 and "X-MM-Job-Id" not in refused.headers
    assert refused.json()["field"] == "prompt" and f"context of {NUM_CTX} tokens" in refused.json()["error"]
    assert truncated.status_code == 200 and truncated.json()["prompt_eval_count"] == NUM_CTX


@pytest.mark.parametrize("path, body, field, message", [
    ("/api/generate", {"model": EMBEDDER, "prompt": "hi"}, "kind", "does not support generate"),
    ("/api/chat", {"model": EMBEDDER, "messages": [{"role": "user", "content": "hi"}]}, "kind",
     "does not support chat"),
    ("/api/chat", {"model": PLAIN, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}, "tools",
     f"{PLAIN} does not support tools"),
    ("/api/generate", {"model": PLAIN, "prompt": "hi", "think": True}, "think", "does not support thinking"),
    ("/api/generate", {"model": PLAIN, "prompt": "a \ud800 b"}, "prompt", "lone surrogate"),
    ("/api/generate", {"model": PLAIN, "prompt": "hi", "format": {"type": "thing"}}, "format", "JSON schema"),
    ("/api/chat", {"model": PLAIN, "messages": [{"role": "assistant", "content": "", "tool_calls": "x"},
                                                {"role": "user", "content": "hi"}]},
     "messages[0].tool_calls", "must be a list"),
    ("/api/generate", {"model": PLAIN, "prompt": "hi", "options": {"num_predict": 100_000}}, "options.num_predict",
     "ceiling"),
])
def test_input_that_would_fail_in_the_worker_is_a_400_before_enqueue(node, path, body, field, message):
    reply = node.post(path, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["field"] == field and message in reply.json()["error"]
    assert "X-MM-Job-Id" not in reply.headers


def test_tools_and_thinking_flow_to_the_runtime_and_back_in_ollamas_shape(node):
    client = ollama.Client(host=node.url, timeout=60)
    asked = [{"role": "user", "content": "Weather in Paris?"}]

    called = client.chat(CAPABLE, asked, tools=[WEATHER], options=OPTS)
    streamed = list(client.chat(CAPABLE, asked, tools=[WEATHER], options=OPTS, stream=True))
    thought = client.generate(CAPABLE, "why?", think=True, options={"num_predict": 30, "seed": 1})

    call = called.message.tool_calls[0].function
    assert call.name == "weather" and set(call.arguments) == {"city"}
    assert [c.function.name for p in streamed for c in (p.message.tool_calls or [])] == ["weather"]
    assert thought.thinking and thought.response


def test_suffix_context_logprobs_and_dimensions_flow_to_the_runtime(node):
    client = ollama.Client(host=node.url, timeout=60)
    filled = client.generate(CAPABLE, "def f():", suffix="    return x", options=OPTS)
    first = client.generate(PLAIN, "one two", options=OPTS)
    second = client.generate(PLAIN, "one two", context=first.context, options=OPTS)
    probed = node.post("/api/generate", {"model": PLAIN, "prompt": "hi", "logprobs": True, "top_logprobs": 2,
                                         "options": OPTS}).json()
    cut = client.embed(EMBEDDER, ["one", "two"], dimensions=8)

    assert filled.response and first.context
    assert second.prompt_eval_count == first.prompt_eval_count + len(first.context)
    assert len(probed["logprobs"]) == 4 and all(len(e["top_logprobs"]) == 2 for e in probed["logprobs"])
    assert [len(v) for v in cut.embeddings] == [8, 8]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in cut.embeddings)


def test_null_options_are_ignored_as_langchain_ollama_sends_them(node):
    options = {"mirostat": None, "num_ctx": None, "temperature": None, "stop": None, "top_k": None}
    reply = node.post("/api/embed", {"model": EMBEDDER, "input": ["a", "b"], "options": options})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["embeddings"]) == 2


def test_a_num_ctx_other_than_the_models_is_run_with_the_models_and_said_so(node):
    reply = node.post("/api/generate", {"model": PLAIN, "prompt": "hi", "options": OPTS | {"num_ctx": 8192}})
    streamed = httpx.post(node.url + "/api/generate", json={"model": PLAIN, "prompt": "hi",
                                                             "options": OPTS | {"num_ctx": 8192}}, timeout=60)
    assert reply.status_code == 200 and "num_ctx 8192 was ignored" in reply.json()["warnings"][0]
    assert "num_ctx 8192 was ignored" in reply.headers["X-MM-Warning"]
    final = json.loads(streamed.text.strip().splitlines()[-1])
    assert final["done"] and "num_ctx 8192 was ignored" in final["warnings"][0]
    assert "warnings" not in node.post("/api/generate", {"model": PLAIN, "prompt": "hi", "options": OPTS}).json()


def test_a_models_own_num_predict_ceiling_is_set_through_the_gateway(node):
    # Given a ceiling of 10 tokens set on one model
    patched = httpx.patch(f"{node.url}/api/models/{PLAIN}", json={"max_num_predict": 10}, timeout=10)
    try:
        assert patched.status_code == 200 and patched.json()["max_num_predict"] == 10
        # Expect 11 refused once clients see it (they cache the registry for a few seconds), 10 accepted
        wait_for(lambda: node.post("/api/generate", {"model": PLAIN, "prompt": "hi",
                                                     "options": {"num_predict": 11}}).status_code == 400,
                 15, interval=0.5, what="the new ceiling to apply")
        assert node.post("/api/generate", {"model": PLAIN, "prompt": "hi",
                                           "options": {"num_predict": 10}}).status_code == 200
        bad = httpx.patch(f"{node.url}/api/models/{PLAIN}", json={"max_num_predict": -1}, timeout=10)
        assert bad.status_code == 400 and bad.json()["field"] == "max_num_predict"
    finally:
        httpx.patch(f"{node.url}/api/models/{PLAIN}", json={"max_num_predict": 0}, timeout=10)
