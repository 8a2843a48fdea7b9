"""Validation of job requests: pure, no services."""

import base64

import pytest

from mm.errors import UnknownModel, ValidationError
from mm.settings import Settings, load
from mm.validation import validate

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
