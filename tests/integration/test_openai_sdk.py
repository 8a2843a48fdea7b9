"""The official ``openai`` SDK (and LiteLLM's openai provider), unmodified, against the gateway's ``/v1`` API.

Real redis-server, a real gpu-broker and model-worker, the embedded runtime's sim engine and the
gateway, each a child process; every wait has a deadline.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from mm.gateway.openai_shape import decode_base64_embedding
from tests.gateway_proc import secured_ollama_stack
from tests.support import GB, sim_model

FAST = {"load_bandwidth": 4 * GB, "prompt_rate": 50_000, "eval_rate": 2_000}
CHAT_MODEL, TOOLS_MODEL, EMBED_MODEL, HUGE_MODEL = "sim-a:1b", "sim-tools:1b", "sim-embed:1b", "sim-huge:1b"
MODELS = [
    sim_model(CHAT_MODEL, **FAST),
    sim_model(TOOLS_MODEL, **FAST, capabilities=["tools"]),
    sim_model(EMBED_MODEL, **FAST, kind="embed", embedding_dim=64),
    sim_model(HUGE_MODEL, **FAST, size=8 * GB),  # fits on no node
]
MEMORY = 4 * GB
API_KEY = "sk-test-0123456789"
PREDICT = 4
HI = [{"role": "user", "content": "Say hi"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai-sdk")
    with secured_ollama_stack(tmp, redis_server.url, MODELS, MEMORY, API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.secure_url}/v1", api_key=API_KEY, timeout=60, max_retries=0)


def job_of(gw, job_id: str) -> dict:
    return httpx.get(f"{gw.url}/api/job/{job_id}", timeout=10).json()


def test_models_are_listed_and_retrieved(sdk):
    listed = {m.id: m for m in sdk.models.list()}
    one = sdk.models.retrieve(TOOLS_MODEL)

    assert {CHAT_MODEL, TOOLS_MODEL, EMBED_MODEL} <= set(listed)
    assert listed[CHAT_MODEL].object == "model" and listed[CHAT_MODEL].owned_by == "mm"
    assert one.id == TOOLS_MODEL and one.created > 0


def test_an_unknown_model_is_not_found_with_openai_code(sdk):
    with pytest.raises(openai.NotFoundError) as retrieved:
        sdk.models.retrieve("no-such:1b")
    with pytest.raises(openai.NotFoundError) as chatted:
        sdk.chat.completions.create(model="no-such:1b", messages=HI)

    assert retrieved.value.code == "model_not_found"
    assert chatted.value.code == "model_not_found"


def test_a_chat_completion_answers_with_usage_and_the_job_id(gw, sdk):
    raw = sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HI, max_tokens=PREDICT, seed=1)
    answer = raw.parse()

    job_id = raw.headers["X-MM-Job-Id"]
    assert answer.id == f"chatcmpl-{job_id}" and answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == PREDICT and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + PREDICT
    assert job_of(gw, job_id)["priority"] == "normal"


def test_a_streamed_chat_ends_with_finish_reason_and_a_usage_chunk(sdk):
    chunks = list(sdk.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=PREDICT, stream=True,
                                              stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == PREDICT
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_priority_comes_from_extra_body_or_the_header(gw, sdk):
    by_body = sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HI, max_tokens=PREDICT,
                                                            extra_body={"priority": "high"})
    by_header = sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HI, max_tokens=PREDICT,
                                                              extra_headers={"X-MM-Priority": "low"})
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=CHAT_MODEL, messages=HI, extra_body={"priority": "urgent"})

    assert job_of(gw, by_body.headers["X-MM-Job-Id"])["priority"] == "high"
    assert job_of(gw, by_header.headers["X-MM-Job-Id"])["priority"] == "low"
    assert bad.value.param == "priority"


def test_completions_answer_whole_and_streamed(sdk):
    whole = sdk.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=PREDICT, stop=["\n\n"])
    streamed = list(sdk.completions.create(model=CHAT_MODEL, prompt=["Once upon a time"], max_tokens=PREDICT,
                                           stream=True))

    assert whole.object == "text_completion" and whole.choices[0].text and whole.usage.completion_tokens == PREDICT
    assert "".join(c.choices[0].text for c in streamed) and streamed[-1].choices[0].finish_reason == "length"


def test_a_suffix_on_a_model_without_insert_is_a_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=CHAT_MODEL, prompt="def f(", suffix="return x", max_tokens=PREDICT)

    assert "insert" in refused.value.message


def test_embeddings_come_as_floats_or_base64_of_the_same_vectors(sdk):
    floats = sdk.embeddings.create(model=EMBED_MODEL, input=["one", "two"])
    packed = sdk.embeddings.with_raw_response.create(model=EMBED_MODEL, input="one", encoding_format="base64")

    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 64
    assert floats.usage.prompt_tokens > 0 and floats.model == EMBED_MODEL
    vector = decode_base64_embedding(packed.http_response.json()["data"][0]["embedding"])
    assert vector == pytest.approx(floats.data[0].embedding, rel=1e-5, abs=1e-6)


def test_a_model_with_tools_calls_one_and_the_result_goes_back(sdk):
    called = sdk.chat.completions.create(model=TOOLS_MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                         tools=[WEATHER], max_tokens=PREDICT)
    call = called.choices[0].message.tool_calls[0]
    answered = sdk.chat.completions.create(model=TOOLS_MODEL, tools=[WEATHER], max_tokens=PREDICT, messages=[
        {"role": "user", "content": "Weather?"}, called.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    streamed = list(sdk.chat.completions.create(model=TOOLS_MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                                tools=[WEATHER], max_tokens=PREDICT, stream=True))

    assert called.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather" and "city" in call.function.arguments
    assert answered.choices[0].finish_reason != "tool_calls" and answered.choices[0].message.content
    calls = [t for c in streamed if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and streamed[-1].choices[0].finish_reason == "tool_calls"


def test_tools_for_a_model_without_them_is_a_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=CHAT_MODEL, messages=HI, tools=[WEATHER])

    assert "does not support tools" in refused.value.message


def test_n_over_one_is_a_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=CHAT_MODEL, messages=HI, n=2)

    assert refused.value.param == "n"


def test_a_bad_key_is_an_authentication_error_in_openai_shape(gw):
    bad = openai.OpenAI(base_url=f"{gw.secure_url}/v1", api_key="sk-wrong", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as refused:
        bad.models.list()

    assert refused.value.code == "invalid_api_key"
    assert refused.value.body["type"] == "invalid_request_error"


def test_a_missing_key_bad_json_and_a_wrong_method_are_openai_errors(gw):
    chat = f"{gw.secure_url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}

    no_key = httpx.post(chat, json={"model": CHAT_MODEL, "messages": HI}, timeout=10)
    not_json = httpx.post(chat, content=b"{nope", headers=auth, timeout=10)
    wrong_method = httpx.get(chat, headers=auth, timeout=10)

    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}


def test_an_unknown_v1_path_is_an_openai_404(gw):
    reply = httpx.post(f"{gw.url}/v1/assistants", json={}, timeout=10)

    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_url"


def test_a_model_that_fits_no_node_is_unavailable(sdk):
    with pytest.raises(openai.InternalServerError) as refused:
        sdk.chat.completions.create(model=HUGE_MODEL, messages=HI, max_tokens=PREDICT)

    assert refused.value.status_code == 503 and "largest node" in refused.value.message


def test_litellm_openai_provider_completes(gw, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    answer = litellm.completion(model=f"openai/{CHAT_MODEL}", messages=HI, max_tokens=PREDICT,
                                api_base=f"{gw.secure_url}/v1", api_key=API_KEY)

    assert answer.choices[0].message.content
