"""The llama engine beyond the contract: real memory, serialised access, structured output."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ollama
import pytest

from tests.procs import wait_for
from tests.runtime_server import RuntimeProc, start_runtime

pytestmark = pytest.mark.llama
MODEL = "gemma3:270m"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):
    runtime = start_runtime(tmp_path_factory.mktemp("llama"), engine="llama", timeout=120)
    yield runtime
    runtime.stop()


def client(runtime: RuntimeProc) -> ollama.Client:
    return ollama.Client(host=runtime.url, timeout=120)


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_loading_takes_the_reported_size_and_unloading_gives_it_back(rt: RuntimeProc) -> None:
    client(rt).generate(MODEL, "", keep_alive=0)
    wait_for(lambda: not client(rt).ps().models, timeout=30, what="nothing loaded")
    before = rss(rt.proc.pid)

    client(rt).generate(MODEL, "")
    size = client(rt).ps().models[0].size
    loaded = rss(rt.proc.pid)
    client(rt).generate(MODEL, "", keep_alive=0)
    after = rss(rt.proc.pid)

    assert size > 250_000_000  # at least the 253 MB of weights
    assert abs((loaded - before) - size) < 0.15 * size
    assert after - before < 0.15 * size


def test_concurrent_requests_on_one_slot_are_served_one_after_the_other(rt: RuntimeProc) -> None:
    opts = {"seed": 3, "temperature": 0, "num_predict": 6}
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda i: client(rt).generate(MODEL, f"Count to {i}.", options=opts), range(3)))

    assert all(r.done and r.eval_count >= 1 for r in replies)
    waits = sorted(r.total_duration - r.load_duration - r.prompt_eval_duration - r.eval_duration for r in replies)
    assert waits[-1] > waits[0]  # the last one waited for the slot while the others ran


def test_json_format_constrains_the_output(rt: RuntimeProc) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}

    reply = client(rt).chat(MODEL, messages=[{"role": "user", "content": "Name a colour as JSON."}],
                            format=schema, options={"temperature": 0, "num_predict": 40})

    assert "colour" in json.loads(reply.message.content)


def test_a_prompt_over_the_context_keeps_its_end_unless_truncate_is_false(rt: RuntimeProc) -> None:
    # Given a prompt far over gemma3:270m's num_ctx of 2048 tokens
    prompt = "Remember this. " * 1500 + "Say hi."
    opts = {"seed": 1, "temperature": 0, "num_predict": 4}
    # When it is sent as is, and with truncate false, expect its end kept, or Ollama's 400
    cut = client(rt).generate(MODEL, prompt, options=opts)
    chat = client(rt).chat(MODEL, [{"role": "user", "content": prompt}], options=opts)
    with pytest.raises(ollama.ResponseError) as refused:
        client(rt)._request(ollama.GenerateResponse, "POST", "/api/generate",
                            json={"model": MODEL, "prompt": prompt, "truncate": False, "stream": False})
    assert cut.done and 1000 < cut.prompt_eval_count < 2048
    assert chat.done and 1000 < chat.prompt_eval_count < 2048
    assert refused.value.status_code == 400 and refused.value.error == "the input length exceeds the context length"


@pytest.mark.parametrize("kwargs, error", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "gemma3:270m does not support tools"),
    ({"think": True}, '"gemma3:270m" does not support thinking'),
    ({"logprobs": True}, "gemma3:270m does not support logprobs"),
])
def test_what_the_llama_engine_cannot_do_is_a_400(rt: RuntimeProc, kwargs: dict, error: str) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client(rt).chat(MODEL, [{"role": "user", "content": "hi"}], **kwargs)
    assert refused.value.status_code == 400 and refused.value.error.startswith(error)


def test_generate_returns_a_context_that_continues_the_conversation(rt: RuntimeProc) -> None:
    opts = {"seed": 1, "temperature": 0, "num_predict": 4}
    first = client(rt).generate(MODEL, "My name is Ada.", options=opts)
    second = client(rt).generate(MODEL, "What is my name?", context=first.context, options=opts)
    alone = client(rt).generate(MODEL, "What is my name?", options=opts)
    assert first.context and all(isinstance(t, int) for t in first.context)
    assert second.prompt_eval_count >= alone.prompt_eval_count + len(first.context) - 2
