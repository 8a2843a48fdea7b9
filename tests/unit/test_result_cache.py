"""The result cache's pure parts: which requests are cacheable, their keys, and a cached answer's shape."""

import dataclasses

import pytest

from mm import result_cache
from mm.gateway.ollama_shape import cache_from
from mm.settings import Settings
from mm.validation import JobRequest, validate

KNOWN = frozenset({"m:1b"})
DIGEST = "a" * 64
LOAD = {"num_ctx": 4096}
IMAGE = "aGk="  # base64 of "hi"


def payload(**kwargs):
    kwargs.setdefault("options", {"temperature": 0})
    return validate(kwargs.pop("model", "m:1b"), known_models=KNOWN, settings=Settings(), **kwargs).payload()


def key(**kwargs):
    return result_cache.key_for(payload(**kwargs), DIGEST, LOAD)


BASE = {"prompt": "Why is the sky blue?"}


def test_the_same_deterministic_request_gets_the_same_key_every_time():
    assert key(**BASE) == key(**BASE)
    assert key(**BASE).startswith("mm:cache:e:")


@pytest.mark.parametrize("change", [
    {"prompt": "Why is the sea blue?"},
    {"options": {"temperature": 0, "num_predict": 8}},
    {"options": {"temperature": 0, "top_k": 1}},
    {"options": {"temperature": 0, "stop": ["\n"]}},
    {"options": {"seed": 1}},
    {"images": [IMAGE]},
    {"format": "json"},
    {"system": "Answer briefly."},
    {"raw": True},
    {"template": "{{ .Prompt }}"},
    {"suffix": "end"},
    {"context": [1, 2, 3]},
    {"think": True},
    {"logprobs": True},
    {"top_logprobs": 2, "logprobs": True},
    {"truncate": False},
])
def test_any_change_that_alters_the_answer_changes_the_key(change):
    assert key(**(BASE | change)) != key(**BASE)


@pytest.mark.parametrize("change", [
    {"kind": "chat", "prompt": None, "messages": [{"role": "user", "content": "Why is the sky blue?"}]},
    {"kind": "chat", "prompt": None, "messages": [{"role": "user", "content": "Why is the sky blue?"}],
     "tools": [{"type": "function", "function": {"name": "f"}}]},
    {"kind": "embed", "dimensions": 8},
    {"kind": "embed"},
])
def test_kinds_messages_tools_and_dimensions_are_in_the_key(change):
    assert key(**(BASE | change)) != key(**BASE)


def test_another_model_digest_or_load_options_change_the_key():
    request = payload(**BASE)
    assert result_cache.key_for(request, "b" * 64, LOAD) != result_cache.key_for(request, DIGEST, LOAD)
    assert result_cache.key_for(request, DIGEST, {"num_ctx": 8192}) != result_cache.key_for(request, DIGEST, LOAD)


@pytest.mark.parametrize("change", [
    {"priority": "high"}, {"priority": "low"}, {"metadata": {"run": "eval-7"}}, {"stream": True},
    {"cache": True}, {"cache": False},
])
def test_priority_metadata_stream_and_the_cache_flag_leave_the_key_alone(change):
    assert key(**(BASE | change)) == key(**BASE)


def test_option_order_and_unset_fields_leave_the_key_alone():
    one = key(prompt="hi", options={"temperature": 0, "num_predict": 4}, suffix="", context=[])
    other = key(prompt="hi", options={"num_predict": 4, "temperature": 0.0}, suffix=None)
    assert one == other


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7}, {"temperature": 0.2, "num_predict": 8},
                                     {"seed": -1}, {"seed": -1, "temperature": 0.5}])
def test_a_non_deterministic_request_is_not_cacheable(options):
    request = payload(prompt="hi", options=options)
    assert not result_cache.deterministic(request)
    assert result_cache.key_for(request, DIGEST, LOAD) is None


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.0}, {"seed": 0}, {"seed": 42},
                                     {"seed": 7, "temperature": 0.9}])
def test_temperature_zero_or_a_fixed_seed_is_deterministic(options):
    assert result_cache.deterministic(payload(prompt="hi", options=options))


def test_an_embedding_is_deterministic_without_options():
    assert result_cache.deterministic(payload(prompt="hi", kind="embed", options=None))


def test_a_model_without_a_known_digest_is_never_cached():
    assert result_cache.key_for(payload(**BASE), "", LOAD) is None


def test_every_request_field_is_either_in_the_key_or_deliberately_left_out():
    fields = {f.name for f in dataclasses.fields(JobRequest)}
    assert fields == set(result_cache.KEY_FIELDS) | set(result_cache.IGNORED_FIELDS)
    assert not set(result_cache.KEY_FIELDS) & set(result_cache.IGNORED_FIELDS)


def test_the_cache_flag_follows_mm_cache_default_unless_the_request_says():
    on = Settings(cache_default=True)
    assert validate("m:1b", known_models=KNOWN, settings=on, prompt="hi").cache is True
    assert validate("m:1b", known_models=KNOWN, settings=on, prompt="hi", cache=False).cache is False
    assert validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi").cache is False
    assert "cache" not in validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi").payload()


def test_a_cache_flag_that_is_not_a_bool_is_refused():
    from mm.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        validate("m:1b", known_models=KNOWN, settings=Settings(), prompt="hi", cache="yes")
    assert err.value.field == "cache"


RESULT = {"id": "job-1", "model": "m:1b", "kind": "generate", "node": "n1", "worker": "w1",
          "response": "The sky is blue because of Rayleigh scattering.", "done_reason": "stop", "context": [1, 2],
          "timings": {"prompt_tokens": 9, "eval_tokens": 12, "runtime_s": 1.5, "queue_wait_s": 0.3},
          "runtime": {"model": "m:1b", "done": True, "done_reason": "stop", "eval_count": 12,
                      "total_duration": 1_500_000_000}}


def test_a_served_result_is_the_stored_answer_with_cached_timings_and_its_own_id():
    served = result_cache.served(RESULT, "job-2", ("a warning",))
    assert served["id"] == "job-2" and served["response"] == RESULT["response"]
    assert served["timings"]["cached"] is True and served["timings"]["runtime_s"] == 0.0
    assert served["timings"]["saved_runtime_s"] == 1.5 and served["timings"]["eval_tokens"] == 12
    assert served["warnings"] == ["a warning"]


def test_a_cached_generate_streams_as_ollama_chunks_that_join_into_the_answer():
    chunks = result_cache.chunks(RESULT)
    assert "".join(c["response"] for c in chunks) == RESULT["response"]
    assert len(chunks) > 3 and not any(c["done"] for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["eval_count"] == 12 and final["context"] == [1, 2]
    assert final["response"] == ""


def test_a_cached_chat_streams_its_thinking_content_and_tool_calls_as_messages():
    calls = [{"function": {"name": "f", "arguments": {}}}]
    result = {"model": "m:1b", "kind": "chat", "done_reason": "stop", "runtime": {},
              "message": {"role": "assistant", "content": "Hello there", "thinking": "hm", "tool_calls": calls}}
    chunks = result_cache.chunks(result)
    assert chunks[0]["message"]["thinking"] == "hm"
    assert "".join(c["message"]["content"] for c in chunks) == "Hello there"
    assert any(c["message"].get("tool_calls") == calls for c in chunks)
    assert chunks[-1]["done"] and chunks[-1]["message"] == {"role": "assistant", "content": ""}


def test_a_long_answer_streams_in_at_most_max_chunks():
    long = RESULT | {"response": "word " * 5000}
    chunks = result_cache.chunks(long)
    assert len(chunks) <= result_cache.MAX_CHUNKS + 1
    assert "".join(c["response"] for c in chunks) == long["response"]


@pytest.mark.parametrize("header, expected", [(None, None), ("", None), ("use", True), ("USE", True),
                                              ("off", False), ("bypass", False)])
def test_the_cache_header_says_use_off_or_nothing(header, expected):
    assert cache_from(header) is expected


def test_a_bad_cache_header_is_refused():
    from mm.gateway.base import ApiError

    with pytest.raises(ApiError):
        cache_from("maybe")


def test_job_request_defaults_to_no_cache():
    assert JobRequest("m", "generate", "normal", "hi", None, {}, [], {}).cache is False
