"""The embedded runtime's model store, as Ollama's: a known model is served once pulled, and a
deleted one is gone (unloaded first) until pulled again."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.runtime_server import RuntimeProc, start_runtime
from tests.support import GB, sim_model

MODELS = [
    sim_model("sim-a:1b", load_bandwidth=10 * GB, eval_rate=500),
    sim_model("sim-later:1b", load_bandwidth=10 * GB, eval_rate=500, pulled=False),
]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):
    runtime = start_runtime(tmp_path_factory.mktemp("pull-delete"), models=MODELS)
    yield runtime
    runtime.stop()


def names(c: ollama.Client) -> set[str]:
    return {m.model for m in c.list().models}


def test_a_known_model_is_listed_and_served_only_once_pulled(rt: RuntimeProc) -> None:
    c = ollama.Client(host=rt.url, timeout=60)
    assert "sim-later:1b" not in names(c)
    with pytest.raises(ollama.ResponseError) as missing:
        c.generate("sim-later:1b", "hi")
    assert missing.value.status_code == 404

    assert c.pull("sim-later:1b").status == "success"

    assert "sim-later:1b" in names(c)
    assert c.generate("sim-later:1b", "hi", options={"num_predict": 2}).done


def test_a_delete_unloads_and_unlists_the_model_until_it_is_pulled_again(rt: RuntimeProc) -> None:
    c = ollama.Client(host=rt.url, timeout=60)
    c.generate("sim-a:1b", "hi", options={"num_predict": 2}, keep_alive=-1)

    c.delete("sim-a:1b")

    assert "sim-a:1b" not in names(c) and "sim-a:1b" not in {m.model for m in c.ps().models}
    with pytest.raises(ollama.ResponseError) as again:
        c.delete("sim-a:1b")
    assert again.value.status_code == 404 and again.value.error == "model 'sim-a:1b' not found"
    assert c.pull("sim-a:1b").status == "success" and "sim-a:1b" in names(c)


def test_head_answers_on_the_routes_ollama_registers_it_for(rt: RuntimeProc) -> None:
    for path in ("/", "/api/tags", "/api/version"):
        head = httpx.head(rt.url + path)
        assert head.status_code == 200 and head.content == b"", path
