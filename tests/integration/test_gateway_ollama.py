"""The gateway as Ollama's clients meet it: HEAD, the bearer scheme, pooled connections after
refusals, oversized headers, and pulls and deletes run by the leader on the node's runtime.

Real redis-server, a real gpu-broker and model-worker, the embedded runtime's sim engine and the
gateway, each a child process; every wait has a deadline.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import ollama
import pytest
import redis

from mm import client, keys, model_ops, registry
from tests.gateway_proc import secured_ollama_stack
from tests.procs import wait_for
from tests.stack import REPO
from tests.support import GB, sim_model

FAST = {"load_bandwidth": 4 * GB, "prompt_rate": 50_000, "eval_rate": 2_000}
MODELS = [
    sim_model("sim-a:1b", **FAST),
    sim_model("sim-gone:1b", **FAST),
    sim_model("sim-slow:1b", **(FAST | {"load_bandwidth": GB // 5})),  # loads in 5 s: its jobs wait queued
    sim_model("sim-new:1b", **FAST, pulled=False),  # known to the runtime, listed once pulled
    sim_model("sim-cli:1b", **FAST, pulled=False),
]
MEMORY = 4 * GB
API_KEY = "test-key-0123456789"
OPTS = {"num_predict": 4, "seed": 1}
GET_ROUTES = ("/", "/api/tags", "/api/ps", "/api/version", "/api/health", "/health", "/api/stats", "/api/models",
              "/models/active", "/openapi.json", "/api/jobs")


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-ollama")
    with secured_ollama_stack(tmp, redis_server.url, MODELS, MEMORY, API_KEY) as s:
        yield s


def test_head_answers_every_get_route_with_the_get_status_and_no_body(gw):
    for path in GET_ROUTES:
        head, get = httpx.head(gw.url + path), httpx.get(gw.url + path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and int(head.headers["Content-Length"]) > 0, path
    assert httpx.head(gw.url + "/api/generate").status_code == 405
    assert httpx.head(gw.secure_url + "/api/tags").status_code == 401


def test_the_embedded_runtime_answers_head_like_ollama(gw):
    for path in ("/", "/api/tags", "/api/version"):
        assert httpx.head(gw.runtime_url + path).status_code == 200, path
    assert httpx.get(gw.runtime_url + "/").text == "Ollama is running"


def test_the_bearer_scheme_is_matched_in_any_case(gw):
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        headers = {"Authorization": f"{scheme} {API_KEY}"}
        assert httpx.get(gw.secure_url + "/api/tags", headers=headers).status_code == 200
    for header in (f"Basic {API_KEY}", f"Bearer{API_KEY}", "Bearer wrong", API_KEY):
        assert httpx.get(gw.secure_url + "/api/tags", headers={"Authorization": header}).status_code == 401, header


def test_a_pooled_connection_stays_usable_after_404_and_401_answers(gw):
    good = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=10) as pooled:
        for _ in range(30):
            missing = pooled.post(gw.url + "/api/copy", json={"source": "sim-a:1b", "destination": "x"})
            assert missing.status_code == 404 and "close" not in missing.headers.get("Connection", "")
            assert pooled.get(gw.url + "/api/tags").status_code == 200
            refused = pooled.post(gw.secure_url + "/api/generate", json={"model": "sim-a:1b", "prompt": "hi"})
            assert refused.status_code == 401 and "close" not in refused.headers.get("Connection", "")
            assert pooled.get(gw.secure_url + "/api/tags", headers=good).status_code == 200


def test_the_ollama_client_reuses_its_connection_after_a_404(gw):
    ollama_client = ollama.Client(host=gw.url, timeout=10)
    for _ in range(30):
        with pytest.raises(ollama.ResponseError) as missing:
            ollama_client.copy("sim-a:1b", "sim-copy:1b")
        assert missing.value.status_code == 404
        assert any(m.model == "sim-a:1b" for m in ollama_client.list().models)


def test_a_header_block_over_the_limit_gets_431_and_the_next_request_works(gw):
    with httpx.Client(timeout=10) as pooled:
        big = pooled.get(gw.url + "/api/tags", headers={"X-Padding": "a" * 70_000})
        assert big.status_code == 431 and big.json()["field"] == "headers"
        assert pooled.get(gw.url + "/api/tags").status_code == 200


def test_a_pull_streams_ollamas_progress_and_the_model_is_usable_at_once(gw):
    ollama_client = ollama.Client(host=gw.url, timeout=60)
    lines = list(ollama_client.pull("sim-new:1b", stream=True))

    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloads = [line for line in lines if line.digest]
    assert downloads and downloads[-1].completed == downloads[-1].total > 0
    assert downloads[0].status.startswith("downloading sha256:")
    assert "sim-new:1b" in {m.model for m in ollama_client.list().models}
    assert ollama_client.generate("sim-new:1b", "hi", options=OPTS).done
    r = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"])
    assert registry.get(r, "sim-new:1b").nodes == ["n1"]
    again = httpx.post(gw.url + "/api/pull", json={"model": "sim-new:1b", "stream": False}, timeout=60)
    assert again.status_code == 200 and again.json() == {"status": "success"}


def test_a_pull_of_a_model_no_runtime_knows_fails_with_ollamas_error(gw):
    with pytest.raises(ollama.ResponseError) as failed:
        list(ollama.Client(host=gw.url, timeout=60).pull("nowhere:1b", stream=True))
    assert "file does not exist" in str(failed.value)
    refused = httpx.post(gw.url + "/api/pull", json={"model": "nowhere:1b", "stream": False}, timeout=60)
    assert refused.status_code == 502 and "file does not exist" in refused.json()["error"]
    assert httpx.post(gw.url + "/api/pull", json={"stream": False}).status_code == 400


def test_mm_models_pull_goes_through_the_leader_and_shows_progress(gw):
    done = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "models", "pull", "sim-cli:1b"],
                          env=gw.stack.env, cwd=str(REPO), capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "pulling manifest" in done.stdout and "(100%)" in done.stdout and "registered" in done.stdout
    r = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"])
    assert registry.get(r, "sim-cli:1b") is not None


def test_a_delete_removes_the_model_from_the_runtime_and_the_registry(gw):
    ollama_client = ollama.Client(host=gw.url, timeout=60)
    ollama_client.delete("sim-gone:1b")

    assert "sim-gone:1b" not in {m.model for m in ollama_client.list().models}
    assert "sim-gone:1b" not in {m["name"] for m in httpx.get(gw.runtime_url + "/api/tags").json()["models"]}
    with pytest.raises(ollama.ResponseError) as missing:
        ollama_client.delete("sim-gone:1b")
    assert missing.value.status_code == 404 and "not found" in str(missing.value)


def test_a_delete_is_refused_while_the_model_is_resident(gw):
    ollama_client = ollama.Client(host=gw.url, timeout=60)
    ollama_client.generate("sim-a:1b", "hi", options=OPTS)

    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.delete("sim-a:1b")
    assert refused.value.status_code == 409 and "resident" in str(refused.value)
    assert "sim-a:1b" in {m.model for m in ollama_client.list().models}


def test_a_delete_is_refused_while_jobs_are_queued(gw):
    job = client.submit("sim-slow:1b", "hi", options=OPTS)

    refused = httpx.request("DELETE", gw.url + "/api/delete", json={"model": "sim-slow:1b"}, timeout=60)
    assert refused.status_code == 409 and "queued" in refused.json()["error"]
    assert job.get(timeout=60)["response"]
    r = redis.Redis.from_url(gw.stack.env["MM_REDIS_URL"])
    assert r.hexists(keys.MODELS, "sim-slow:1b")
    wait_for(lambda: not r.hlen(keys.MODEL_OP_REQUESTS), 10, what="the leader to clear handled requests")


def test_without_a_leader_a_pull_is_refused_at_once_and_nothing_is_filed(redis_server):
    empty = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7")
    empty.flushdb()

    with pytest.raises(model_ops.ModelOpError) as no_leader:
        model_ops.request(empty, "pull", "sim-new:1b")
    with pytest.raises(model_ops.ModelOpError) as unknown:
        model_ops.request(empty, "delete", "sim-new:1b")

    assert no_leader.value.status == 503 and "no leader" in no_leader.value.message
    assert unknown.value.status == 404
    assert not empty.exists(keys.MODEL_OP_REQUESTS)
