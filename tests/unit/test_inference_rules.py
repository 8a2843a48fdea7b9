"""The worker's runtime call, pure parts: which errors are retried, what a failure carries, the wire body."""

import httpx
import ollama
import pytest

from mm.workers.inference import _relay, build_result, failure, is_transient, request_body


@pytest.mark.parametrize("exc, transient", [
    (ollama.ResponseError("busy", 429), True),
    (ollama.ResponseError("bad gateway", 502), True),
    (ollama.ResponseError("server busy", 503), True),
    (ollama.ResponseError("gateway timeout", 504), True),
    (ollama.ResponseError("the input length exceeds the context length", 400), False),
    (ollama.ResponseError('model "x" not found', 404), False),
    (ollama.ResponseError("simulated failure", 500), False),
    (ollama.ResponseError("error mid-stream"), False),  # status -1: an error line in a stream
    (ConnectionError("Failed to connect to Ollama"), True),
    (httpx.ConnectError("refused"), True),
    (httpx.RemoteProtocolError("server disconnected"), True),
    (httpx.ConnectTimeout("connect"), True),
    (httpx.ReadTimeout("read"), False),
    (TimeoutError(), False),
    (ValueError("bug"), False),
])
def test_only_connection_errors_and_429_502_503_504_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_a_runtime_refusal_fails_with_its_message_and_status():
    failed = failure(ollama.ResponseError("the input length exceeds the context length", 400), 600)
    assert str(failed) == "runtime error: the input length exceeds the context length" and failed.status == 400
    assert failure(ollama.ResponseError("mid-stream"), 600).status is None


def test_a_timed_out_call_fails_naming_the_timeout():
    failed = failure(httpx.ReadTimeout("timed out"), 1.5)
    assert "timed out after 1.5s" in str(failed) and "not retried" in str(failed) and failed.status == 504


def test_the_wire_body_carries_ollamas_fields_per_kind_and_the_models_fixed_options():
    generate = request_body({"model": "m", "kind": "generate", "prompt": "p", "suffix": "s", "think": "low",
                             "context": [1, 2], "truncate": False, "tools": [{"x": 1}],
                             "options": {"num_ctx": 99, "seed": 1}}, {"num_ctx": 64}, stream=True)
    assert generate == {"model": "m", "keep_alive": -1, "stream": True, "options": {"num_ctx": 64, "seed": 1},
                        "prompt": "p", "suffix": "s", "context": [1, 2], "think": "low", "truncate": False}
    chat = request_body({"model": "m", "kind": "chat", "messages": [{"role": "user", "content": "c"}],
                         "tools": [{"type": "function"}], "logprobs": True, "top_logprobs": 2}, {}, stream=False)
    assert chat["tools"] == [{"type": "function"}] and chat["logprobs"] is True and chat["top_logprobs"] == 2
    embed = request_body({"model": "m", "kind": "embed", "prompt": ["a"], "dimensions": 8}, {}, stream=False)
    assert embed["input"] == ["a"] and embed["dimensions"] == 8 and "prompt" not in embed


def test_a_streamed_chat_keeps_its_thinking_and_tool_calls():
    call = {"function": {"name": "weather", "arguments": {"city": "Paris"}}}
    chunks = [ollama.ChatResponse(model="m", message={"role": "assistant", "content": "", "thinking": "hm"}),
              ollama.ChatResponse(model="m", message={"role": "assistant", "content": "", "tool_calls": [call]}),
              ollama.ChatResponse(model="m", message={"role": "assistant", "content": ""}, done=True)]
    published = []
    final = _relay(iter(chunks), published.append, "chat")
    assert len(published) == 3
    assert final["message"]["thinking"] == "hm"
    assert final["message"]["tool_calls"][0]["function"]["name"] == "weather"


def test_the_result_keeps_what_the_runtime_returned_and_the_warnings():
    response = {"response": "hi", "thinking": "hm", "context": [1, 2], "logprobs": [{"token": "hi", "logprob": -1}],
                "eval_count": 1}
    result = build_result(response, {"model": "m", "kind": "generate", "warnings": ["num_ctx ignored"]}, job_id="j",
                          node="n", worker="w", queue_wait_s=0, load_s=0)
    assert (result["thinking"], result["context"], result["warnings"]) == ("hm", [1, 2], ["num_ctx ignored"])
    assert result["logprobs"][0]["token"] == "hi"
