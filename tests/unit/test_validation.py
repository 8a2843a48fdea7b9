"""Validation of job requests: pure, no services."""

import base64
import re

import pytest

from mm.errors import UnknownModel, ValidationError
from mm.settings import Settings, load
from mm.validation import ModelFacts, min_tokens, validate

SETTINGS = Settings(max_prompt_chars=100, max_images=2, max_image_bytes=64)
KNOWN = frozenset({"m:1b"})


def check(**kwargs):
    return validate(kwargs.pop("model", "m:1b"), known_models=KNOWN, settings=SETTINGS, **kwargs)


def test_a_good_generate_request_passes_with_its_fields():
    request = check(prompt="hi", priority="high", options={"num_predict": 5, "temperature": 0.2, "stop": "\n"})
    assert request.options == {"num_predict": 5, "temperature": 0.2, "stop": ["\n"]}
    assert request.payload()["kind"] == "generate"


@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": "x" * 101}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "hi", "priority": "urgent"}, "priority"),
    ({"prompt": "hi", "priority": 1}, "priority"),
    ({"prompt": "hi", "kind": "summarize"}, "kind"),
    ({"prompt": "hi", "options": {"temperature": "hot"}}, "options.temperature"),
    ({"prompt": "hi", "options": {"num_predict": True}}, "options.num_predict"),
    ({"prompt": "hi", "options": {"temperature": float("nan")}}, "options.temperature"),
    ({"prompt": "hi", "options": {"stop": [1]}}, "options.stop"),
    ({"prompt": "hi", "options": {"warp_speed": 9}}, "options.warp_speed"),
    ({"prompt": "hi", "options": ["num_predict"]}, "options"),
    ({"prompt": "hi", "images": ["@@@"]}, "images[0]"),
    ({"prompt": "hi", "images": "abc"}, "images"),
    ({"prompt": "hi", "images": [base64.b64encode(b"x").decode()] * 3}, "images"),
    ({"prompt": "hi", "images": [base64.b64encode(b"x" * 65).decode()]}, "images[0]"),
    ({"prompt": "hi", "metadata": {"x": object()}}, "metadata"),
    ({"prompt": "hi", "metadata": [1]}, "metadata"),
    ({"kind": "chat", "messages": []}, "messages"),
    ({"kind": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"kind": "chat", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"kind": "chat", "messages": [{"role": "user", "content": ""}]}, "messages"),
    ({"kind": "chat", "prompt": "hi", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
    ({"kind": "embed", "prompt": []}, "prompt"),
    ({"kind": "embed", "prompt": ["ok", ""]}, "prompt[1]"),
    ({"prompt": "hi", "format": "xml"}, "format"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        check(**kwargs)
    assert info.value.field == field


def test_an_unknown_model_is_refused():
    with pytest.raises(UnknownModel, match="nope:1b"):
        check(model="nope:1b", prompt="hi")


def test_a_malformed_request_is_reported_as_such_even_for_an_unknown_model():
    with pytest.raises(ValidationError) as info:
        check(model="nope:1b", prompt="")
    assert info.value.field == "prompt"


def test_chat_and_embed_requests_pass():
    assert check(kind="chat", messages=[{"role": "user", "content": "hi"}]).messages[0]["role"] == "user"
    assert check(kind="embed", prompt=["a", "b"]).prompt == ["a", "b"]


def test_settings_read_typed_values_from_the_environment():
    settings = load({"MM_MAX_PROMPT_CHARS": "7", "MM_USE_NVML": "false", "MM_SIZE_MULTIPLIER": "1.5"})
    assert (settings.max_prompt_chars, settings.use_nvml, settings.size_multiplier) == (7, False, 1.5)


def test_settings_refuse_a_visibility_timeout_shorter_than_the_job_limit():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        load({"MM_VISIBILITY_TIMEOUT_S": "60", "MM_JOB_TIME_LIMIT_S": "120"})


def test_settings_name_a_bad_value():
    with pytest.raises(ValueError, match="MM_TICK_S"):
        load({"MM_TICK_S": "fast"})


def test_settings_refuse_a_visibility_timeout_shorter_than_all_runtime_attempts():
    with pytest.raises(ValueError, match="longest job"):
        load({"MM_VISIBILITY_TIMEOUT_S": "2000", "MM_RUNTIME_TIMEOUT_S": "600", "MM_RUNTIME_RETRIES": "3"})


@pytest.mark.parametrize("environ, says", [
    ({"MM_HEARTBEAT_S": "3", "MM_STATE_TTL_S": "5"}, "MM_STATE_TTL_S (5.0) must be at least twice MM_HEARTBEAT_S"),
    ({"MM_MEMORY_BUDGET": "1000", "MM_SAFETY_MARGIN": "1000"}, "MM_MEMORY_BUDGET (1000) must exceed MM_SAFETY_MARGIN"),
    ({"MM_ORPHAN_GRACE_S": "3600"}, "MM_ORPHAN_GRACE_S (3600.0) must be below MM_VISIBILITY_TIMEOUT_S"),
    ({"MM_WORKER_SLOTS": "0"}, "MM_WORKER_SLOTS must be at least 1"),
    ({"MM_TICK_S": "0"}, "MM_TICK_S must be more than 0"),
    ({"MM_REDIS_MEMORY_LIMIT": "90"}, "MM_REDIS_MEMORY_LIMIT is a share of maxmemory, 0 to 1"),
])
def test_settings_refuse_values_that_contradict_each_other_naming_both(environ, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        load(environ)


def test_settings_name_every_contradiction_at_once():
    with pytest.raises(ValueError) as refused:
        load({"MM_WORKER_SLOTS": "0", "MM_PLACEMENT": "random"})
    assert "MM_WORKER_SLOTS" in str(refused.value) and "MM_PLACEMENT" in str(refused.value)


def test_the_default_settings_contradict_nothing():
    assert load({}).contradictions() == []


# --- Ollama's fields, model facts and input that would fail later ------------------------------

GENERATIVE = ModelFacts(num_ctx=16, context_length=128, capabilities=frozenset({"completion", "embedding"}))
EMBEDDER = ModelFacts(num_ctx=64, capabilities=frozenset({"embedding"}))
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "function": {"name": "weather", "description": "Weather in a city", "parameters": SCHEMA}}


def test_null_options_are_ignored_as_ollama_ignores_them():
    # Given the options langchain-ollama's embeddings send: every known option, the unset ones null
    options = {"mirostat": None, "num_ctx": None, "temperature": None, "stop": None, "top_k": 5}
    # When validated, expect the nulls dropped and the rest kept
    assert check(kind="embed", prompt="hi", options=options).options == {"top_k": 5}


def test_ollama_fields_are_accepted_and_carried_in_the_payload():
    generate = check(prompt="def f():", suffix="    return x", think="low", logprobs=True, top_logprobs=3,
                     context=[1, 2, 3], template="{{ .Prompt }}", truncate=False)
    assert {k: generate.payload()[k] for k in ("suffix", "think", "logprobs", "top_logprobs", "context",
                                               "template", "truncate")} == {
        "suffix": "    return x", "think": "low", "logprobs": True, "top_logprobs": 3, "context": [1, 2, 3],
        "template": "{{ .Prompt }}", "truncate": False}
    chat = check(kind="chat", messages=[{"role": "user", "content": "weather?"}], tools=[TOOL], think=True)
    assert chat.payload()["tools"] == [TOOL] and chat.payload()["think"] is True
    embed = check(kind="embed", prompt=["a"], dimensions=16, truncate=True)
    assert (embed.payload()["dimensions"], embed.payload()["truncate"]) == (16, True)
    assert check(prompt="hi", raw=True).payload()["raw"] is True


def test_unset_ollama_fields_stay_out_of_the_payload():
    payload = check(prompt="hi", suffix="", context=[], think=None, top_logprobs=0).payload()
    assert not {"suffix", "context", "think", "top_logprobs", "raw", "tools", "warnings"} & set(payload)


@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": "hi", "tools": [TOOL]}, "tools"),  # generate takes no tools
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}], "suffix": "y"}, "suffix"),
    ({"kind": "embed", "prompt": "x", "think": True}, "think"),
    ({"prompt": "hi", "dimensions": 8}, "dimensions"),
    ({"prompt": "hi", "think": "very"}, "think"),
    ({"prompt": "hi", "top_logprobs": 21}, "top_logprobs"),
    ({"prompt": "hi", "top_logprobs": -1}, "top_logprobs"),
    ({"prompt": "hi", "logprobs": "yes"}, "logprobs"),
    ({"prompt": "hi", "truncate": "no"}, "truncate"),
    ({"prompt": "hi", "context": ["a"]}, "context"),
    ({"prompt": "hi", "context": "1,2"}, "context"),
    ({"prompt": "hi", "template": 3}, "template"),
    ({"prompt": "hi", "raw": True, "system": "be brief"}, "raw"),
    ({"prompt": "hi", "raw": True, "context": [1]}, "raw"),
    ({"kind": "embed", "prompt": "x", "dimensions": -3}, "dimensions"),
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}], "tools": {"name": "f"}}, "tools"),
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools[0].function"),
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "thing"}}}]},
     "tools[0].function.parameters"),
])
def test_bad_ollama_fields_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        check(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": "bad \ud800 surrogate"}, "prompt"),
    ({"prompt": "hi", "system": "\udfff"}, "system"),
    ({"kind": "embed", "prompt": ["ok", "x\ud800"]}, "prompt[1]"),
    ({"kind": "chat", "messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
    ({"prompt": "hi", "metadata": {"note": "\ud800"}}, "metadata.note"),
    ({"prompt": "hi", "suffix": "\ud800"}, "suffix"),
])
def test_a_lone_surrogate_is_refused_at_validation(kwargs, field):
    with pytest.raises(ValidationError, match="lone surrogate") as info:
        check(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("schema", [
    {"type": "thing"},
    {"type": ["string", 3]},
    {"type": "object", "properties": []},
    {"type": "object", "properties": {"a": "string"}},
    {"type": "object", "required": "a"},
    {"type": "array", "items": 5},
    {"anyOf": []},
    {"type": "string", "minLength": -1},
    {"type": "object", "properties": {"a": {"type": "array", "items": {"enum": "x"}}}},
    ["json"],
    True,
])
def test_a_format_that_is_not_a_json_schema_is_refused(schema):
    with pytest.raises(ValidationError, match="format") as info:
        check(prompt="hi", format=schema)
    assert info.value.field == "format"


@pytest.mark.parametrize("schema", [
    SCHEMA,
    {"type": "array", "items": {"type": "integer", "minimum": 0}},
    {"type": ["string", "null"]},
    {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/n"}], "$defs": {"n": {"type": "number"}}},
    {"type": "object", "additionalProperties": False, "properties": {"x": True}},
])
def test_a_valid_json_schema_format_passes(schema):
    assert check(prompt="hi", format=schema).format == schema


def test_a_format_that_json_cannot_carry_is_refused():
    with pytest.raises(ValidationError, match="plain JSON") as info:
        check(prompt="hi", format={"type": "number", "default": float("nan")})
    assert info.value.field == "format"


def test_an_empty_format_means_none():
    assert check(prompt="hi", format="").format is None


@pytest.mark.parametrize("message, field", [
    ({"role": "assistant", "content": "", "tool_calls": "x"}, "messages[0].tool_calls"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": "f"}]}, "messages[0].tool_calls[0].function"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]},
     "messages[0].tool_calls[0].function.name"),
    ({"role": "user", "content": "hi", "images": "abc"}, "messages[0].images"),
    ({"role": "user", "content": "hi", "images": ["@@"]}, "messages[0].images[0]"),
    ({"role": "tool", "content": "sunny", "tool_name": 5}, "messages[0].tool_name"),
    ({"role": "assistant", "content": "x", "thinking": ["a"]}, "messages[0].thinking"),
])
def test_a_message_with_a_malformed_field_is_refused(message, field):
    with pytest.raises(ValidationError) as info:
        check(kind="chat", messages=[message, {"role": "user", "content": "next"}])
    assert info.value.field == field


def test_a_tool_conversation_in_ollamas_shape_passes():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]
    assert check(kind="chat", messages=messages, tools=[TOOL]).messages == messages


def facts_check(facts, **kwargs):
    return validate(kwargs.pop("model", "m:1b"), known_models=KNOWN, settings=SETTINGS, facts=facts, **kwargs)


@pytest.mark.parametrize("kind, kwargs", [
    ("generate", {"prompt": "hi"}),
    ("chat", {"messages": [{"role": "user", "content": "hi"}]}),
])
def test_a_generate_or_chat_job_for_an_embedding_only_model_is_refused(kind, kwargs):
    with pytest.raises(ValidationError, match=f"does not support {kind}") as info:
        facts_check(EMBEDDER, kind=kind, **kwargs)
    assert info.value.field == "kind"


def test_an_embed_job_for_a_model_without_the_embedding_capability_is_refused():
    completion_only = ModelFacts(capabilities=frozenset({"completion"}))
    with pytest.raises(ValidationError, match="does not support embeddings"):
        facts_check(completion_only, kind="embed", prompt="hi")


@pytest.mark.parametrize("kwargs, field, capability", [
    ({"kind": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL]}, "tools", "tools"),
    ({"prompt": "x", "think": True}, "think", "thinking"),
    ({"prompt": "x", "suffix": "y"}, "suffix", "insert"),
])
def test_a_field_the_model_lacks_the_capability_for_is_refused_as_ollama_words_it(kwargs, field, capability):
    with pytest.raises(ValidationError, match=f"m:1b does not support {capability}") as info:
        facts_check(GENERATIVE, **kwargs)
    assert info.value.field == field


def test_think_false_passes_on_a_model_that_cannot_think():
    assert facts_check(GENERATIVE, prompt="x", think=False).think is False


def test_unknown_capabilities_are_not_checked():
    assert facts_check(ModelFacts(num_ctx=64), prompt="x", think=True, suffix="y").think is True


def test_a_prompt_over_the_context_with_truncate_false_is_refused():
    # Given a model run with num_ctx 16 and a prompt of at least 20 tokens
    prompt = "w " * 20
    # When truncate is false, expect a 400 naming the context; by default, expect it to pass (the runtime truncates)
    with pytest.raises(ValidationError, match="context of 16 tokens") as info:
        facts_check(GENERATIVE, prompt=prompt, truncate=False)
    assert info.value.field == "prompt"
    assert facts_check(GENERATIVE, prompt=prompt).prompt == prompt
    with pytest.raises(ValidationError, match="messages"):
        facts_check(GENERATIVE, kind="chat", messages=[{"role": "user", "content": prompt}], truncate=False)
    with pytest.raises(ValidationError) as info:
        facts_check(GENERATIVE, kind="embed", prompt=["short", prompt], truncate=False)
    assert info.value.field == "prompt[1]"


def test_the_context_is_num_ctx_capped_by_the_models_own_context_length():
    assert ModelFacts(num_ctx=4096, context_length=2048).context == 2048
    assert ModelFacts(num_ctx=4096).context == 4096
    assert ModelFacts().context == 0


def test_a_prompt_within_the_context_passes_with_truncate_false():
    assert facts_check(GENERATIVE, prompt="w " * 16, truncate=False).truncate is False


def test_a_num_ctx_other_than_the_models_is_accepted_with_a_warning():
    request = facts_check(GENERATIVE, prompt="hi", options={"num_ctx": 8192})
    assert request.warnings and "num_ctx 8192 was ignored" in request.warnings[0]
    assert request.payload()["warnings"] == list(request.warnings)
    assert facts_check(GENERATIVE, prompt="hi", options={"num_ctx": 16}).warnings == ()


def test_num_predict_over_the_ceiling_is_refused():
    with pytest.raises(ValidationError, match="ceiling of 4096") as info:
        check(prompt="hi", options={"num_predict": 4097})
    assert info.value.field == "options.num_predict"
    assert check(prompt="hi", options={"num_predict": 4096}).options["num_predict"] == 4096
    assert check(prompt="hi", options={"num_predict": -1}).options["num_predict"] == -1


def test_a_models_own_num_predict_ceiling_overrides_the_setting():
    small = ModelFacts(max_num_predict=100)
    with pytest.raises(ValidationError, match="ceiling of 100"):
        facts_check(small, prompt="hi", options={"num_predict": 101})
    unlimited = Settings(max_num_predict=0)
    assert validate("m:1b", known_models=KNOWN, settings=unlimited, prompt="hi",
                    options={"num_predict": 100_000}).options["num_predict"] == 100_000


def test_min_tokens_is_a_lower_bound_of_common_tokenizations():
    assert min_tokens("Hello, world!") == 4
    assert min_tokens("x.. y") == 3
    assert min_tokens("don't stop") == 2  # GPT-style tokenizers keep "'t" in one token with nothing else
    assert min_tokens("") == 0


def test_an_embed_job_over_the_total_input_limit_is_refused_naming_the_setting():
    small = Settings(max_prompt_chars=100, max_embed_chars=250)
    inputs = ["x" * 100, "y" * 100]

    assert validate("m:1b", known_models=KNOWN, settings=small, kind="embed", prompt=inputs).prompt == inputs
    with pytest.raises(ValidationError, match=r"3 inputs of 300 characters in all.*MM_MAX_EMBED_CHARS") as caught:
        validate("m:1b", known_models=KNOWN, settings=small, kind="embed", prompt=[*inputs, "z" * 100])
    assert caught.value.field == "prompt"
