"""The embedded runtime (sim engine) and Ollama's request fields: tools, think, suffix, raw,
template, context, logprobs, dimensions and truncate, honoured or refused with Ollama's errors."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest

from tests.runtime_server import RuntimeProc, start_runtime
from tests.support import GB, sim_model

CAPABLE = "sim-capable:1b"
PLAIN = "sim-plain:1b"
EMBED = "sim-embed:335m"
MODELS = [
    sim_model(CAPABLE, load_bandwidth=10 * GB, prompt_rate=50_000, eval_rate=2000, num_ctx=64,
              capabilities=["tools", "thinking", "insert"]),
    sim_model(PLAIN, load_bandwidth=10 * GB, prompt_rate=50_000, eval_rate=2000, num_ctx=64),
    sim_model(EMBED, size=GB // 2, load_bandwidth=10 * GB, kind="embed", embedding_dim=32, num_ctx=64),
]
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
LONG = " ".join(f"w{i}" for i in range(200))  # 200 tokens, over num_ctx 64


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):
    runtime = start_runtime(tmp_path_factory.mktemp("fields"), models=MODELS)
    yield runtime
    runtime.stop()


def client(runtime: RuntimeProc) -> ollama.Client:
    return ollama.Client(host=runtime.url, timeout=60)


def post(runtime: RuntimeProc, path: str, body: dict) -> httpx.Response:
    return httpx.post(runtime.url + path, json={"stream": False} | body, timeout=60)


@pytest.mark.parametrize("path, body, error", [
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]},
     f"{PLAIN} does not support tools"),
    ("/api/generate", {"prompt": "hi", "think": True}, f'"{PLAIN}" does not support thinking'),
    ("/api/generate", {"prompt": "def f():", "suffix": "return x"}, f"{PLAIN} does not support insert"),
    ("/api/generate", {"prompt": "hi", "raw": True, "system": "brief"},
     "raw mode does not support template, system, or context"),
    ("/api/generate", {"prompt": "hi", "logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
])
def test_what_a_model_cannot_do_is_refused_with_ollamas_error(rt: RuntimeProc, path: str, body: dict,
                                                              error: str) -> None:
    reply = post(rt, path, {"model": PLAIN} | body)
    assert (reply.status_code, reply.json()) == (400, {"error": error})


def test_think_false_is_accepted_by_a_model_that_cannot_think(rt: RuntimeProc) -> None:
    assert client(rt).generate(PLAIN, "hi", think=False, options={"num_predict": 3}).response


def test_a_tool_call_comes_back_in_ollamas_shape(rt: RuntimeProc) -> None:
    # Given a model with the tools capability and a user question
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # When it is asked with a tool, whole and streamed
    whole = client(rt).chat(CAPABLE, messages, tools=[WEATHER], options={"seed": 3})
    parts = list(client(rt).chat(CAPABLE, messages, tools=[WEATHER], options={"seed": 3}, stream=True))
    # Expect a call of that tool with arguments as an object, in the message, as Ollama answers
    call = whole.message.tool_calls[0].function
    assert call.name == "weather" and isinstance(call.arguments, dict) and set(call.arguments) == {"city", "days"}
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["weather"] and parts[-1].done
    assert whole.eval_count > 0 and whole.done_reason == "stop"
    # And once the tool answered, the model answers in text
    answered = client(rt).chat(CAPABLE, messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather",
                                                                           "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"}], tools=[WEATHER], options={"num_predict": 5})
    assert answered.message.content and not answered.message.tool_calls


def test_a_thinking_model_thinks_when_asked(rt: RuntimeProc) -> None:
    generated = client(rt).generate(CAPABLE, "why?", think=True, options={"num_predict": 40, "seed": 1})
    chat = client(rt).chat(CAPABLE, [{"role": "user", "content": "why?"}], think="low",
                           options={"num_predict": 20, "seed": 1})
    streamed = list(client(rt).generate(CAPABLE, "why?", think=True, options={"num_predict": 40, "seed": 1},
                                        stream=True))
    assert generated.thinking and generated.response
    assert chat.message.thinking and chat.message.content
    assert "".join(p.thinking or "" for p in streamed) == generated.thinking
    assert client(rt).generate(CAPABLE, "why?", options={"num_predict": 5}).thinking is None


def test_suffix_and_template_are_accepted(rt: RuntimeProc) -> None:
    assert client(rt).generate(CAPABLE, "def f():", suffix="    return x", options={"num_predict": 4}).response
    templated = client(rt).generate(CAPABLE, "hi", template="<s>{{ .Prompt }}</s>", options={"num_predict": 4})
    assert templated.response and templated.prompt_eval_count == len(["<", "s", ">", "hi", "<", "/", "s", ">"])


def test_context_continues_a_previous_generate(rt: RuntimeProc) -> None:
    first = client(rt).generate(CAPABLE, "one two", options={"num_predict": 3})
    assert first.context and all(isinstance(t, int) for t in first.context)
    second = client(rt).generate(CAPABLE, "one two", context=first.context, options={"num_predict": 3})
    assert second.prompt_eval_count == first.prompt_eval_count + len(first.context)
    assert client(rt).generate(CAPABLE, "one two", raw=True, options={"num_predict": 3}).context is None


def test_logprobs_come_with_each_token(rt: RuntimeProc) -> None:
    reply = post(rt, "/api/generate", {"model": PLAIN, "prompt": "hi", "logprobs": True, "top_logprobs": 3,
                                       "options": {"num_predict": 4, "seed": 2}}).json()
    assert len(reply["logprobs"]) == reply["eval_count"] == 4
    assert "".join(e["token"] for e in reply["logprobs"]) == reply["response"]
    assert all(len(e["top_logprobs"]) == 3 and e["logprob"] <= 0 for e in reply["logprobs"])


def test_a_prompt_over_the_context_keeps_its_end_unless_truncate_is_false(rt: RuntimeProc) -> None:
    # Given a prompt of 200 tokens for a model run with num_ctx 64
    truncated = client(rt).generate(PLAIN, LONG, options={"num_predict": 2, "seed": 1})
    same_end = client(rt).generate(PLAIN, "other words " * 50 + LONG, options={"num_predict": 2, "seed": 1})
    refused = post(rt, "/api/generate", {"model": PLAIN, "prompt": LONG, "truncate": False})
    # Expect it cut to the context, keeping its end (a different start gives the same answer); refused on request
    assert truncated.prompt_eval_count == 64 and truncated.response == same_end.response
    assert (refused.status_code, refused.json()) == (400, {"error": "the input length exceeds the context length"})


def test_a_chat_over_the_context_drops_its_oldest_messages(rt: RuntimeProc) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": LONG},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}]
    reply = client(rt).chat(PLAIN, messages, options={"num_predict": 2})
    assert 0 < reply.prompt_eval_count < 64
    refused = post(rt, "/api/chat", {"model": PLAIN, "messages": messages, "truncate": False})
    assert refused.status_code == 400 and "exceeds the context length" in refused.json()["error"]


def test_embeddings_honour_dimensions_and_truncate(rt: RuntimeProc) -> None:
    short = client(rt).embed(EMBED, ["one", "two"], dimensions=8)
    assert [len(v) for v in short.embeddings] == [8, 8]
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-6) for v in short.embeddings)
    assert client(rt).embed(EMBED, LONG).prompt_eval_count == 64
    refused = post(rt, "/api/embed", {"model": EMBED, "input": LONG, "truncate": False})
    assert (refused.status_code, refused.json()) == (400, {"error": "the input length exceeds the context length"})


def test_show_lists_the_models_capabilities(rt: RuntimeProc) -> None:
    assert client(rt).show(CAPABLE).capabilities == ["completion", "embedding", "tools", "thinking", "insert"]
    assert client(rt).show(EMBED).capabilities == ["embedding"]
