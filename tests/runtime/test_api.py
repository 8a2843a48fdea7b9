"""Runtime behaviour beyond the shared contract, on the sim engine: pull, faults, hang-ups, CLI."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

from tests.procs import wait_for
from tests.runtime_server import REPO, RuntimeProc, start_runtime
from tests.support import GB, sim_model

MODELS = [
    sim_model("sim-a:1b", load_bandwidth=10 * GB, prompt_rate=5000, eval_rate=500),
    sim_model("sim-slow:1b", load_bandwidth=10 * GB, eval_rate=10, parallel=1),
    sim_model("sim-faulty:1b", load_bandwidth=10 * GB, eval_rate=500, fail_after=3),
    sim_model("sim-embed:335m", size=GB // 2, load_bandwidth=10 * GB, kind="embed", embedding_dim=64),
]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):
    runtime = start_runtime(tmp_path_factory.mktemp("api"), models=MODELS)
    yield runtime
    runtime.stop()


def client(runtime: RuntimeProc) -> ollama.Client:
    return ollama.Client(host=runtime.url, timeout=60)


# -- pull ---------------------------------------------------------------------------------------

def test_pull_streams_ollamas_status_lines_for_a_known_model(rt: RuntimeProc) -> None:
    lines = list(client(rt).pull("sim-a:1b", stream=True))

    assert lines[0].status == "pulling manifest"
    downloads = [line for line in lines if line.digest]
    assert downloads and downloads[-1].completed == downloads[-1].total == GB
    assert lines[-1].status == "success"
    assert client(rt).pull("sim-a:1b").status == "success"


def test_pull_of_an_unknown_model_is_a_clear_error(rt: RuntimeProc) -> None:
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client(rt).pull("llama9:900b", stream=True))
    with pytest.raises(ollama.ResponseError) as single:
        client(rt).pull("llama9:900b")

    assert "file does not exist" in streamed.value.error and "llama9:900b" in streamed.value.error
    assert single.value.status_code == 500 and "not served by this runtime" in single.value.error


# -- validation details -------------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"num_predict": "ten"}, 'option "num_predict" must be of type integer'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
    ({"stop": [1, 2]}, 'option "stop" must be of an array of strings'),
    ({"num_ctx": 0}, 'option "num_ctx" must be a positive integer'),
])
def test_wrong_option_types_are_400_with_the_option_named(rt: RuntimeProc, options: dict, message: str) -> None:
    response = httpx.post(rt.url + "/api/generate", json={"model": "sim-a:1b", "prompt": "x", "options": options},
                          timeout=30)

    assert response.status_code == 400 and response.json() == {"error": message}


def test_keep_alive_accepts_every_ollama_form(rt: RuntimeProc) -> None:
    for keep_alive in ("5m", "1h30m", "10s", "300", 300, 2.5, -1, "-1m"):
        reply = client(rt).generate("sim-a:1b", "", keep_alive=keep_alive)
        assert reply.done_reason == "load", keep_alive


def test_unknown_paths_are_plain_404(rt: RuntimeProc) -> None:
    response = httpx.get(rt.url + "/api/nothing", timeout=30)

    assert response.status_code == 404 and response.text == "404 page not found"


def test_an_embedding_model_refuses_to_generate(rt: RuntimeProc) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(rt).generate("sim-embed:335m", "hello")

    assert caught.value.status_code == 400 and "does not support generate" in caught.value.error
    assert len(client(rt).embed("sim-embed:335m", "hello").embeddings[0]) == 64


def test_legacy_embeddings_endpoint_answers_one_vector(rt: RuntimeProc) -> None:
    reply = httpx.post(rt.url + "/api/embeddings", json={"model": "sim-embed:335m", "prompt": "hi"}, timeout=30).json()
    modern = client(rt).embed("sim-embed:335m", "hi").embeddings[0]

    assert reply["embedding"] == pytest.approx(modern)


def test_json_format_gives_a_json_object(rt: RuntimeProc) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "name": {"type": "string"}}}

    reply = client(rt).generate("sim-a:1b", "who?", format=schema, options={"seed": 1, "num_predict": 30})

    assert set(json.loads(reply.response)) == {"age", "name"}


# -- faults and hang-ups ------------------------------------------------------------------------

def test_an_error_mid_stream_arrives_as_an_ndjson_error_line(rt: RuntimeProc) -> None:
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        for part in client(rt).generate("sim-faulty:1b", "go", stream=True, options={"num_predict": 10}):
            received.append(part.response)

    assert len(received) == 3 and "simulated failure" in caught.value.error
    raw = httpx.post(rt.url + "/api/generate", json={"model": "sim-faulty:1b", "prompt": "go"},
                     timeout=30).text.splitlines()
    assert json.loads(raw[-1]) == {"error": "simulated failure after 3 tokens (fail_after)"}
    with pytest.raises(ollama.ResponseError) as whole:
        client(rt).generate("sim-faulty:1b", "go", options={"num_predict": 10})
    assert whole.value.status_code == 500
    assert client(rt).generate("sim-a:1b", "still here?", options={"num_predict": 2}).eval_count == 2


def test_a_client_hanging_up_frees_its_slot(rt: RuntimeProc) -> None:
    # Given a one-slot model streaming a 3 s answer to a client that hangs up after two tokens
    client(rt).generate("sim-slow:1b", "")
    body = json.dumps({"model": "sim-slow:1b", "prompt": "long", "options": {"num_predict": 30}}).encode()
    with socket.create_connection(("127.0.0.1", rt.port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        seen = b""
        while seen.count(b'"done": false') < 2:
            seen += sock.recv(4096)

    # When another request arrives, it gets the slot long before the 3 s answer would have ended
    started = time.monotonic()
    reply = client(rt).generate("sim-slow:1b", "short", options={"num_predict": 2})

    assert reply.eval_count == 2
    assert time.monotonic() - started < 1.5
    wait_for(lambda: "client=gone" in rt.output(), timeout=5, what="the hang-up in the log")


def test_a_request_whose_client_left_while_it_waited_for_a_slot_is_never_run(rt: RuntimeProc) -> None:
    # Given the one-slot model busy for a second, and a request waiting behind it whose client leaves
    client(rt).generate("sim-slow:1b", "")
    busy = threading.Thread(target=client(rt).generate, args=("sim-slow:1b", "busy"),
                            kwargs={"options": {"num_predict": 10}})
    busy.start()
    wait_for(lambda: httpx.get(f"{rt.url}/mm/queue", timeout=5).json()["models"]["sim-slow:1b"]["running"] == 1,
             timeout=10, what="the first request to hold the slot")
    body = json.dumps({"model": "sim-slow:1b", "prompt": "left while waiting", "options": {"num_predict": 5}}).encode()
    with socket.create_connection(("127.0.0.1", rt.port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: httpx.get(f"{rt.url}/mm/queue", timeout=5).json()["models"]["sim-slow:1b"]["waiting"] == 1,
                 timeout=10, what="the second request to wait for the slot")

    # When the slot frees, the request of the client that left is dropped, as Ollama drops it
    busy.join(timeout=30)
    digest = hashlib.sha1(body).hexdigest()[:12]
    wait_for(lambda: f"request={digest}" in rt.output(), timeout=10, what="the dropped request's log line")
    line = next(x for x in rt.output().splitlines() if f"request={digest}" in x)
    assert "client=gone" in line and "eval_count" not in line, line
    assert rt.served()[digest] == 0


# -- process ------------------------------------------------------------------------------------

def test_sigterm_shuts_down_cleanly_and_unloads(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path, models=MODELS[:1])
    client(runtime).generate("sim-a:1b", "")

    runtime.proc.signal(signal.SIGTERM)

    assert runtime.proc.popen.wait(10) == 0
    log = runtime.output()
    assert "unload model=sim-a:1b reason=shutdown" in log and "stopped" in log
    runtime.stop()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "runtime", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("content,message", [
    ("not json", "is not valid JSON"),
    ('{"name": "x"}', "non-empty JSON list"),
    ('[{"engine": "sim"}]', "'name' is required"),
    ('[{"name": "x", "size": "big"}]', "field 'size' must be int"),
    ('[{"name": "x", "engine": "gpt"}]', "'engine' must be one of sim, llama"),
    ('[{"name": "x", "eval_rate": 0}]', "'eval_rate' must be > 0"),
    ('[{"name": "x", "colour": "red"}]', "unknown field(s) colour"),
    ('[{"name": "x"}, {"name": "x:latest"}]', "listed twice"),
])
def test_an_invalid_models_file_is_refused_with_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)

    result = _run_cli("--models", str(path), "--port", "1")

    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_memory_budget_that_is_not_a_size_is_refused() -> None:
    result = _run_cli("--memory", "lots", "--port", "1")

    assert result.returncode == 2 and "not a size in bytes" in result.stderr, result.stderr
