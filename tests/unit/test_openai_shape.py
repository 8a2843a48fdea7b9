"""OpenAI's request and response shapes to and from mm jobs: pure conversions, no gateway."""

from __future__ import annotations

import json

import pytest

from mm.errors import JobFailed, UnknownModel, ValidationError
from mm.gateway.base import ApiError
from mm.gateway.openai_shape import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    OpenAIError,
    decode_base64_embedding,
    finish_reason,
    job_kwargs,
    openai_error,
    priority_of,
    response_body,
    stream_of,
)
from mm.gateway.openai_stream import StreamShaper

PIXEL = "iVBORw0KGgo="
RESULT = {"message": {"role": "assistant", "content": "Hi there"}, "done_reason": "stop",
          "timings": {"prompt_tokens": 7, "eval_tokens": 3}}


def chat(**body):
    return job_kwargs(CHAT, {"model": "m:1b", "messages": [{"role": "user", "content": "hi"}], **body})[1]


def test_text_and_image_parts_become_one_message_with_ollama_images():
    _, kwargs = job_kwargs(CHAT, {"model": "m:1b", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is"}, {"type": "text", "text": "this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}]})

    assert kwargs["messages"] == [{"role": "user", "content": "What is\nthis?", "images": [PIXEL]}]
    assert kwargs["kind"] == "chat"


def test_an_image_by_http_url_is_refused():
    with pytest.raises(OpenAIError) as refused:
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}])

    assert refused.value.status == 400 and refused.value.param == "messages[0].content[0].image_url"


def test_sampling_fields_become_ollama_options():
    kwargs = chat(temperature=0.2, top_p=0.9, max_tokens=5, stop="END", seed=3, frequency_penalty=0.5,
                  presence_penalty=0.1)

    assert kwargs["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 5, "stop": ["END"], "seed": 3,
                                 "frequency_penalty": 0.5, "presence_penalty": 0.1}


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=9)["options"] == {"num_predict": 9}


def test_response_format_becomes_ollama_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}

    assert chat(response_format={"type": "json_object"})["format"] == "json"
    assert chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})[
        "format"] == schema
    assert chat(response_format={"type": "text"})["format"] is None


def test_n_over_one_is_refused_naming_n():
    with pytest.raises(OpenAIError) as refused:
        chat(n=2)

    assert refused.value.status == 400 and refused.value.param == "n"
    assert refused.value.body()["error"]["type"] == "invalid_request_error"


def test_a_tool_call_round_trip_converts_arguments_both_ways():
    answer = response_body(CHAT, "m:1b", {"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}, "done_reason": "stop"}, "job-1", 5)
    message = answer["choices"][0]["message"]
    call = message["tool_calls"][0]

    kwargs = chat(tools=[{"type": "function", "function": {"name": "get_weather"}}], messages=[
        {"role": "user", "content": "Weather?"}, message,
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}])

    assert answer["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert kwargs["messages"][1]["tool_calls"] == [
        {"id": call["id"], "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert kwargs["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": call["id"],
                                     "tool_name": "get_weather"}
    assert kwargs["tools"][0]["function"]["name"] == "get_weather"


def test_tool_choice_none_sends_no_tools_and_a_named_choice_only_that_one():
    tools = [{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}]

    assert "tools" not in chat(tools=tools, tool_choice="none")
    assert chat(tools=tools, tool_choice={"type": "function", "function": {"name": "b"}})["tools"] == tools[1:]


def test_completions_take_a_prompt_list_of_one_and_pass_the_suffix():
    model, kwargs = job_kwargs(COMPLETIONS, {"model": "m:1b", "prompt": ["def f("], "suffix": "    return 1",
                                             "max_tokens": 8})

    assert model == "m:1b"
    assert kwargs == {"kind": "generate", "prompt": "def f(", "suffix": "    return 1", "options": {"num_predict": 8}}


def test_embeddings_base64_decodes_to_the_float_vectors():
    result = {"embeddings": [[0.25, -1.5, 3.0], [1.0, 0.0, 0.5]], "timings": {"prompt_tokens": 4}}

    floats = response_body(EMBEDDINGS, "e:1b", result, "job-1", 5)
    packed = response_body(EMBEDDINGS, "e:1b", result, "job-1", 5, encoding="base64")

    assert floats["data"][1] == {"object": "embedding", "index": 1, "embedding": [1.0, 0.0, 0.5]}
    assert [decode_base64_embedding(d["embedding"]) for d in packed["data"]] == result["embeddings"]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert job_kwargs(EMBEDDINGS, {"model": "e:1b", "input": ["a", "b"], "dimensions": 3})[1] == {
        "kind": "embed", "prompt": ["a", "b"], "dimensions": 3}


def test_a_bad_encoding_format_is_refused():
    with pytest.raises(OpenAIError) as refused:
        job_kwargs(EMBEDDINGS, {"model": "e:1b", "input": "a", "encoding_format": "int8"})

    assert refused.value.param == "encoding_format"


def test_finish_reason_maps_ollama_done_reasons():
    assert finish_reason("length") == "length"
    assert finish_reason("stop") == "stop" and finish_reason(None) == "stop" and finish_reason("load") == "stop"
    assert finish_reason("stop", tool_calls=True) == "tool_calls"


def test_a_chat_answer_carries_usage_and_the_job_id():
    answer = response_body(CHAT, "m:1b", RESULT, "abc", 1700000000)

    assert answer["id"] == "chatcmpl-abc" and answer["object"] == "chat.completion" and answer["created"] == 1700000000
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_a_stream_ends_with_finish_reason_then_usage():
    shaper = StreamShaper(CHAT, "m:1b", "abc", 5, include_usage=True)

    first = shaper.chunks({"message": {"role": "assistant", "content": "Hi"}, "done": False})
    last = shaper.chunks({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
                          "prompt_eval_count": 7, "eval_count": 3})

    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert last[0]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert last[1]["choices"] == [] and last[1]["usage"]["total_tokens"] == 10


def test_priority_from_the_header_or_the_body():
    assert priority_of({}, None) == "normal"
    assert priority_of({"priority": "high"}, None) == "high"
    assert priority_of({"priority": "high"}, "LOW") == "low"
    with pytest.raises(OpenAIError):
        priority_of({"priority": "urgent"}, None)
    assert stream_of({"stream": True, "stream_options": {"include_usage": True}}) == (True, True)


def test_mm_errors_map_to_openai_errors():
    assert openai_error(UnknownModel("x")).code == "model_not_found"
    assert openai_error(ApiError(404, "model", 'model "x" not found')).code == "model_not_found"
    assert openai_error(ValidationError("options.seed", "must be an integer")).param == "options.seed"
    assert openai_error(JobFailed("m does not support tools", status=400)).status == 400
    assert openai_error(JobFailed("model 'm' needs 9 bytes, more than the largest node's 4 bytes")).status == 503
    assert openai_error(JobFailed("connection refused")).status == 502
    assert openai_error(ApiError(429, "", "queue full")).type == "rate_limit_error"
