"""Fuzzing the client API's validation: any input either passes or raises ValidationError naming a field."""

import json

from hypothesis import given
from hypothesis import strategies as st

from mm.errors import ValidationError
from mm.settings import Settings
from mm.validation import JobRequest, ModelFacts, validate

SETTINGS = Settings(max_prompt_chars=200)
KNOWN = frozenset({"m:1b", "e:1b"})
FIELDS = {"model", "kind", "priority", "prompt", "messages", "options", "images", "metadata", "format", "system",
          "stream", "tools", "think", "raw", "template", "suffix", "context", "logprobs", "top_logprobs",
          "dimensions", "truncate"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
option_keys = st.sampled_from(["num_predict", "temperature", "seed", "stop", "top_k", "num_ctx", "bogus"])


@given(
    model=st.one_of(st.sampled_from(sorted(KNOWN)), json_values),
    kind=st.one_of(st.sampled_from(["generate", "chat", "embed"]), json_values),
    priority=st.one_of(st.sampled_from(["high", "normal", "low"]), json_values),
    prompt=st.one_of(st.text(max_size=250), st.lists(st.text(max_size=20), max_size=3), json_values),
    messages=st.one_of(st.none(), st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "wizard"]), "content": json_values}), max_size=3), json_values),
    options=st.one_of(st.none(), st.dictionaries(option_keys, json_values, max_size=4), json_values),
    images=st.one_of(st.none(), st.lists(st.text(max_size=12), max_size=3), json_values),
    metadata=st.one_of(st.none(), json_values),
    stream=st.one_of(st.booleans(), json_values),
)
def test_any_input_is_accepted_or_refused_with_a_named_field(model, kind, priority, prompt, messages, options,
                                                             images, metadata, stream):
    try:
        request = validate(model, known_models=KNOWN, settings=SETTINGS, kind=kind, priority=priority, prompt=prompt,
                           messages=messages, options=options, images=images, metadata=metadata, stream=stream)
    except ValidationError as exc:
        assert exc.field.split(".")[0].split("[")[0] in FIELDS, exc.field
        assert exc.message
        return
    assert isinstance(request, JobRequest) and request.model in KNOWN


facts = st.one_of(st.none(), st.builds(
    ModelFacts, num_ctx=st.integers(0, 64), context_length=st.integers(0, 64),
    capabilities=st.one_of(st.none(), st.frozensets(st.sampled_from(["completion", "embedding", "tools", "thinking",
                                                                     "insert"]))),
    max_num_predict=st.integers(0, 100)))


@given(
    kind=st.sampled_from(["generate", "chat", "embed"]),
    prompt=st.one_of(st.text(max_size=250), st.lists(st.text(max_size=20), max_size=3)),
    messages=st.one_of(st.none(), st.lists(st.dictionaries(
        st.sampled_from(["role", "content", "images", "tool_calls", "tool_name", "thinking"]),
        st.one_of(st.sampled_from(["user", "assistant", "tool"]), json_values), max_size=4), max_size=3)),
    options=st.one_of(st.none(), st.dictionaries(option_keys, json_values, max_size=4)),
    format=st.one_of(st.none(), st.just("json"), json_values),
    extras=st.dictionaries(st.sampled_from(["tools", "think", "raw", "template", "suffix", "context", "logprobs",
                                            "top_logprobs", "dimensions", "truncate"]),
                           st.one_of(st.sampled_from([True, False, "low", 3, 0, [1, 2]]), json_values), max_size=4),
    model_facts=facts,
)
def test_ollamas_fields_and_model_facts_are_accepted_or_refused_with_a_named_field(kind, prompt, messages, options,
                                                                                 format, extras, model_facts):
    if kind == "chat":
        prompt = None
    try:
        request = validate("m:1b", known_models=KNOWN, settings=SETTINGS, kind=kind, prompt=prompt,
                           messages=messages if kind == "chat" else None, options=options, format=format,
                           facts=model_facts, **extras)
    except ValidationError as exc:
        assert exc.field.split(".")[0].split("[")[0] in FIELDS, exc.field
        assert exc.message
        return
    assert isinstance(request, JobRequest)
    json.dumps(request.payload(), allow_nan=False)  # what Celery's JSON serializer sends to the worker
