"""`mm gateway` end to end: mm's REST endpoints, the Ollama-compatible proxy driven by the
official ``ollama`` client, /metrics, auth and limits, the OpenAPI document (schemathesis), the
status page and ``mm top``.

Real redis-server, real Celery workers, the embedded runtime's sim engine, and the gateway as a
subprocess on a free port; every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest
import redis
import schemathesis
from prometheus_client.parser import text_string_to_metric_families

import mm
from mm import alerts, keys
from mm.settings import get as get_settings
from tests.gateway_proc import start_gateway
from tests.procs import Proc, wait_for
from tests.runtime_server import start_runtime
from tests.stack import REPO, Stack
from tests.support import GB, sim_model

MODELS = [
    sim_model("sim-a:1b", load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=2_000, parallel=4),
    sim_model("sim-b:1b", load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=2_000, parallel=4),
    # Loads in 5 s and generates slowly: a backlog builds up while it loads (priority test).
    sim_model("sim-slow:1b", load_bandwidth=GB // 5, prompt_rate=50_000, eval_rate=500, parallel=4),
    # Every generation fails after two tokens.
    sim_model("sim-fail:1b", load_bandwidth=4 * GB, eval_rate=2_000, fail_after=2),
]
MEMORY = 6 * GB
OPTS = {"num_predict": 8, "seed": 1}
API_KEY = "test-key-0123456789"
SMALL_BODY = 4096
SMALL_PROMPT = 1000


class Cluster:
    def __init__(self, tmp: Path, redis_url: str):
        self.tmp = tmp
        self.r = redis.Redis.from_url(redis_url)
        self.r.flushall()
        self.runtime = start_runtime(tmp, engine="sim", models=MODELS, memory=MEMORY)
        self.stack = Stack(tmp, redis_url, self.runtime.url, memory_budget=MEMORY, safety_margin=100_000_000,
                           runtime_retries=0)
        self.gateways: list[Proc] = []
        self.stack.start_broker()
        self.stack.start_worker("w1", slots=2)
        self.stack.start_worker("w2", slots=2)
        self.stack.wait_ready([m["name"] for m in MODELS], ["w1", "w2"])
        self.url = self.gateway("gateway")
        self.secure_url = self.gateway("gateway-secure", gateway_api_keys=f"other-key,{API_KEY}",
                                       gateway_max_body=SMALL_BODY, max_prompt_chars=SMALL_PROMPT)

    def gateway(self, name: str, **settings: object) -> str:
        proc, url = start_gateway(self.tmp, self.stack.env, name, **settings)
        self.gateways.append(proc)
        return url

    def stop(self) -> None:
        for proc in self.gateways:
            proc.stop()
        self.stack.stop()
        self.runtime.stop()


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("gateway"), redis_server.url)
    yield c
    c.stop()


def get(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.get(url + path, timeout=30, **kwargs)


def post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(url + path, timeout=60, **kwargs)


def wait_job(url: str, job_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (v := get(url, f"/api/job/{job_id}").json())["status"] in ("complete", "failed") and v,
                    timeout, interval=0.1, what=f"job {job_id}")


def resident(r: redis.Redis, model: str) -> bool:
    raw = r.get(keys.node_state("n1"))
    return bool(raw) and any(m["model"] == model for m in json.loads(raw)["resident"])


def schema_of(url: str, headers: dict | None = None):
    return schemathesis.openapi.from_dict(get(url, "/openapi.json", headers=headers).json())


# --- job manager API: submit, job, stats, health --------------------------------------------------

def test_a_submitted_job_is_followed_to_its_result_and_counted_in_stats(cluster):
    reply = post(cluster.url, "/api/submit", json={"model": "sim-a:1b", "prompt": "Why is the sky blue?",
                                                   "priority": "high", "options": OPTS, "metadata": {"run": 7}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "submitted"

    job = wait_job(cluster.url, reply.json()["job_id"])

    assert job["status"] == "complete" and job["model"] == "sim-a:1b" and job["priority"] == "high"
    assert job["result"] and job["timings"]["eval_tokens"] == 8 and job["metadata"] == {"run": 7}
    assert job["submitted_at"] <= job["completed_at"] and job["completed_at"].endswith("Z")
    stats = get(cluster.url, "/api/stats").json()
    assert stats["queue"]["by_status"]["complete"] >= 1
    node = next(n for n in stats["resources"]["nodes"] if n["node"] == "n1")
    assert node["memory"]["total"] == MEMORY and node["memory"]["source"] == "budget"
    assert "sim-a:1b" in [m["model"] for m in node["resident"]]
    assert {"high", "normal", "low", "total", "oldest_wait_s"} <= set(stats["queues"]["sim-a:1b"])
    assert stats["workers"]["total"] == 2
    health = get(cluster.url, "/api/health").json()
    assert health["status"] == "ok" and health["nodes"] == 1 and health["workers"] == 2
    schema = schema_of(cluster.url)
    schema["/api/stats"]["GET"].validate_response(get(cluster.url, "/api/stats"))
    schema["/api/job/{job_id}"]["GET"].validate_response(get(cluster.url, f"/api/job/{job['job_id']}"))


def test_a_failed_job_reports_its_error(cluster):
    reply = post(cluster.url, "/api/submit", json={"model": "sim-fail:1b", "prompt": "x", "options": OPTS})

    job = wait_job(cluster.url, reply.json()["job_id"])

    assert job["status"] == "failed" and "runtime error" in job["error"] and "result" not in job, job
    history = get(cluster.url, "/api/models/sim-fail:1b/history").json()["history"]
    assert history[0]["event"] == "job_failed" and history[0]["node"] == "n1"


# --- model monitor: activity ----------------------------------------------------------------------

def test_reported_models_are_active_and_unused_ones_idle(cluster):
    reply = post(cluster.url, "/models/sim-b:1b/report")
    assert reply.status_code == 200 and reply.json()["model"] == "sim-b:1b"

    active = [m["model"] for m in get(cluster.url, "/models/active").json()["models"]]
    idle = [m["model"] for m in get(cluster.url, "/models/idle").json()["models"]]
    everything = get(cluster.url, "/models/activity").json()

    assert "sim-b:1b" in active and "sim-b:1b" not in idle
    assert "sim-slow:1b" in idle or "sim-slow:1b" in active  # listed either way, never lost
    assert {m["model"] for m in everything["models"]} >= {m["name"] for m in MODELS}
    unknown = post(cluster.url, "/models/no-such:1b/report")
    assert unknown.status_code == 404 and unknown.json()["field"] == "model"
    assert get(cluster.url, "/health").json()["status"] == "ok"


# --- quality metrics ------------------------------------------------------------------------------

def test_quality_events_are_summarized_within_the_time_filter(cluster):
    now = time.time()
    one = post(cluster.url, "/api/metrics", json={"name": "Mistral", "version": "v1", "at": now - 100,
                                                  "prediction_accuracy": 0.5, "drift": 0.1})
    batch = post(cluster.url, "/api/metrics", json={"events": [
        {"name": "Mistral", "version": "v1", "at": now - 10, "prediction_accuracy": 0.9},
        {"name": "Mistral", "version": "v1", "prediction_accuracy": 0.7, "inference_time": 12.5}]})
    assert one.status_code == 201 and batch.status_code == 201 and batch.json()["recorded"] == 2

    everything = get(cluster.url, "/stats/Mistral/v1").json()
    recent = get(cluster.url, "/stats/Mistral/v1", params={"start": now - 50}).json()
    iso_window = get(cluster.url, "/stats/Mistral/v1", params={
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 200)),
        "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 50))}).json()

    assert everything["count"] == 3
    assert everything["fields"]["prediction_accuracy"]["mean"] == pytest.approx(0.7)
    assert recent["count"] == 2 and iso_window["count"] == 1
    bad = post(cluster.url, "/api/metrics", json={"events": [
        {"name": "Mistral", "version": "v1", "drift": 0.2}, {"name": "Mistral", "version": "v1", "drift": "x"}]})
    assert bad.status_code == 400 and bad.json()["field"] == "events[1].drift"
    assert get(cluster.url, "/stats/Mistral/v1").json()["count"] == 3  # the bad batch stored nothing
    assert get(cluster.url, "/stats/Mistral/v1", params={"end": "yesterday"}).json()["field"] == "end"


# --- model control and deployment history: models, start/stop/infer, history ----------------------

def test_start_pins_and_loads_stop_unpins_and_unloads_and_history_records_it(cluster):
    model = "sim-b:1b"
    started = post(cluster.url, f"/api/models/{model}/start", params={"wait": 30})
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running" and started.json()["pinned"] and resident(cluster.r, model)

    stopped = post(cluster.url, f"/api/models/{model}/stop", params={"wait": 30})
    assert stopped.status_code == 200, stopped.text
    assert not stopped.json()["pinned"] and not resident(cluster.r, model)

    history = get(cluster.url, f"/api/models/{model}/history", params={"n": 20}).json()["history"]
    kinds = [h["event"] for h in history]
    assert "load" in kinds and "unload" in kinds and "pin" in kinds
    unload = next(h for h in history if h["event"] == "unload")
    load = next(h for h in history if h["event"] == "load")
    assert unload["node"] == "n1" and unload["size"] == GB and load["size"] == GB and load["seconds"] > 0
    assert 0 <= load["waited_s"] < 30 and 0 <= unload["waited_s"] < 30  # leader's decision -> node started it
    assert unload["at"] > load["at"] and unload["time"].endswith("Z")
    assert [h["pinned"] for h in history if h["event"] == "pin"][:2] == [False, True]  # newest first
    schema_of(cluster.url)["/api/models/{name}/history"]["GET"].validate_response(
        get(cluster.url, f"/api/models/{model}/history"))

    cleared = httpx.delete(f"{cluster.url}/api/models/{model}/history", timeout=10)
    assert cleared.status_code == 200 and cleared.json()["cleared"] >= 3
    assert get(cluster.url, f"/api/models/{model}/history").json()["history"] == []


def test_infer_waits_for_the_result_and_patch_sets_flags(cluster):
    result = post(cluster.url, "/api/models/sim-a:1b/infer", json={"prompt": "hello", "options": OPTS},
                  headers={"X-MM-Priority": "low"})
    assert result.status_code == 200, result.text
    assert result.json()["result"] and result.json()["timings"]["eval_tokens"] == 8
    assert get(cluster.url, f"/api/job/{result.json()['job_id']}").json()["priority"] == "low"

    patched = httpx.patch(f"{cluster.url}/api/models/sim-a:1b", json={"max_parallel": 3, "pinned": True},
                          timeout=10)
    assert patched.status_code == 200 and patched.json()["max_parallel"] == 3 and patched.json()["pinned"]
    listed = {m["name"]: m for m in get(cluster.url, "/api/models").json()["models"]}
    assert listed["sim-a:1b"]["pinned"] and listed["sim-a:1b"]["status"] == "running"
    unpinned = httpx.patch(f"{cluster.url}/api/models/sim-a:1b", json={"pinned": False}, timeout=10)
    assert not unpinned.json()["pinned"]
    for body, field in (({"warm": True}, "warm"), ({"max_parallel": 0}, "max_parallel"), ({"colour": 1}, "colour")):
        refused = httpx.patch(f"{cluster.url}/api/models/sim-a:1b", json=body, timeout=10)
        assert refused.status_code == 400 and refused.json()["field"] == field
    assert httpx.patch(f"{cluster.url}/api/models/nope:1b", json={"pinned": True}, timeout=10).status_code == 404
    schema_of(cluster.url)["/api/models"]["GET"].validate_response(get(cluster.url, "/api/models"))


# --- the Ollama-compatible proxy, through the official client -------------------------------------

def test_the_official_ollama_client_works_through_the_proxy(cluster):
    client = ollama.Client(host=cluster.url)

    generated = client.generate("sim-a:1b", "Why is the sky blue?", options=OPTS)
    streamed = list(client.generate("sim-a:1b", "Why is the sky blue?", options=OPTS, stream=True))
    chat = client.chat("sim-a:1b", messages=[{"role": "user", "content": "hi"}], options=OPTS)
    chat_parts = list(client.chat("sim-a:1b", messages=[{"role": "user", "content": "hi"}], options=OPTS,
                                  stream=True))
    embedded = client.embed("sim-a:1b", ["one", "two"])

    assert generated.done and generated.eval_count == 8 and generated.response
    assert generated.total_duration >= generated.eval_duration > 0 and generated.prompt_eval_count > 0
    # The same seed gives the same text whether streamed or not; tokens came as separate chunks.
    assert "".join(p.response for p in streamed) == generated.response
    assert len(streamed) == 9 and streamed[-1].done and streamed[-1].eval_count == 8
    assert not any(p.done for p in streamed[:-1])
    assert chat.message.role == "assistant" and chat.message.content
    assert "".join(p.message.content for p in chat_parts) == chat.message.content and chat_parts[-1].done
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 0
    assert {m.model for m in client.list().models} >= {m["name"] for m in MODELS}
    assert "sim-a:1b" in [m.model for m in client.ps().models]
    assert client.show("sim-a:1b").capabilities == ["completion", "embedding"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate("no-such:1b", "hi")
    assert missing.value.status_code == 404 and "not found" in missing.value.error


def test_an_empty_prompt_loads_the_model_and_keep_alive_zero_unloads_it(cluster):
    client = ollama.Client(host=cluster.url)
    if resident(cluster.r, "sim-b:1b"):
        client.generate("sim-b:1b", "", keep_alive=0)
        wait_for(lambda: not resident(cluster.r, "sim-b:1b"), 30, what="sim-b unloaded")

    loaded = client.generate("sim-b:1b", "")

    assert loaded.done_reason == "load" and resident(cluster.r, "sim-b:1b")
    assert client.generate("sim-b:1b", "", keep_alive=0).done_reason == "unload"
    wait_for(lambda: not resident(cluster.r, "sim-b:1b"), 30, what="sim-b unloaded")


def test_a_high_priority_request_overtakes_a_low_priority_backlog_through_the_proxy(cluster):
    model, options = "sim-slow:1b", {"num_predict": 50, "seed": 3}  # 0.1 s each; the model loads in 3 s
    assert not resident(cluster.r, model)
    began = time.time()
    low_client = ollama.Client(host=cluster.url, headers={"X-MM-Priority": "low"})
    high_client = ollama.Client(host=cluster.url, headers={"X-MM-Priority": "high"})
    finished: list[tuple[float, str]] = []
    lock = threading.Lock()

    def ask(client: ollama.Client, label: str, stream: bool) -> None:
        if stream:
            assert list(client.generate(model, f"{label} question", options=options, stream=True))[-1].done
        else:
            assert client.generate(model, f"{label} question", options=options).done
        with lock:
            finished.append((time.monotonic(), label))

    lows = [threading.Thread(target=ask, args=(low_client, f"low{i}", False)) for i in range(16)]
    for t in lows:
        t.start()
    wait_for(lambda: cluster.r.llen(keys.priority_list(model, keys.PRIORITIES["low"])) == 16, 30,
             what="16 low jobs queued")
    high = threading.Thread(target=ask, args=(high_client, "high", True))
    high.start()
    for t in [*lows, high]:
        t.join(timeout=90)

    order = [label for _t, label in sorted(finished)]
    assert len(order) == 17, order
    # The rule, from the job records (not the finishing order, which a busy machine reshuffles): no
    # low job still waiting when the high one was queued starts before it, except those a worker
    # slot had already taken off the queue (at most one per slot of the two workers).
    records = [{k.decode(): v.decode() for k, v in cluster.r.hgetall(key).items()}
               for key in cluster.r.scan_iter(keys.job("*"))]
    jobs = [j for j in records if j.get("model") == model and "started_at" in j and float(j["submitted_at"]) >= began]
    high_job = next(j for j in jobs if j["priority"] == "high")
    queued_at, started_at = float(high_job["submitted_at"]), float(high_job["started_at"])
    overtaking = [j for j in jobs if j["priority"] == "low" and queued_at < float(j["started_at"]) < started_at]
    assert len(jobs) >= 17 and len(overtaking) <= 4, f"{len(overtaking)} low jobs started after the high one " \
        f"was queued and before it started; finishing order {order}"


def test_a_job_failing_mid_stream_ends_the_stream_with_an_error_line(cluster):
    client = ollama.Client(host=cluster.url)
    parts = []

    with pytest.raises(ollama.ResponseError) as streamed:
        for part in client.generate("sim-fail:1b", "hi", options=OPTS, stream=True):
            parts.append(part)
    with pytest.raises(ollama.ResponseError) as whole:
        client.generate("sim-fail:1b", "hi", options=OPTS)

    assert len(parts) == 2 and not parts[-1].done  # the runtime fails after two tokens
    assert "runtime error" in streamed.value.error
    # The runtime's own status (its 500), not a 502 of the gateway's making.
    assert whole.value.status_code == 500 and "runtime error" in whole.value.error


def test_infer_answers_202_with_the_job_id_when_the_job_outlasts_its_timeout(cluster):
    reply = post(cluster.url, "/api/models/sim-slow:1b/infer",
                 json={"prompt": "slow", "options": {"num_predict": 100}, "timeout": 0.05})

    assert reply.status_code == 202 and reply.json()["status"] in ("queued", "running")
    assert wait_job(cluster.url, reply.json()["job_id"])["status"] == "complete"


def test_proxy_rejects_a_bad_priority_header_and_what_ollama_refuses(cluster):
    with pytest.raises(ollama.ResponseError) as bad:
        ollama.Client(host=cluster.url, headers={"X-MM-Priority": "urgent"}).generate("sim-a:1b", "hi")
    assert bad.value.status_code == 400 and "X-MM-Priority" in bad.value.error
    raw = post(cluster.url, "/api/generate", json={"model": "sim-a:1b", "prompt": "hi", "raw": True, "system": "x"})
    assert raw.status_code == 400 and raw.json()["field"] == "raw"
    assert "raw mode does not support" in raw.json()["error"]


# --- /metrics ----------------------------------------------------------------------------------------

def test_metrics_parse_and_carry_every_family(cluster):
    mm.generate("sim-a:1b", "count me", options=OPTS, timeout=60)
    for _ in range(3):
        mm.record_metric("Falcon", "v2", prediction_accuracy=0.1)
    alerts.evaluate(cluster.r, get_settings())

    text = get(cluster.url, "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    expected = {"mm_up", "mm_queue_depth", "mm_queue_oldest_wait_seconds", "mm_jobs", "mm_jobs_finished",
                "mm_tokens", "mm_job_latency_seconds", "mm_job_queue_wait_seconds", "mm_model_loads",
                "mm_model_unloads", "mm_node_memory_bytes", "mm_gpu_memory_bytes", "mm_model_resident_bytes",
                "mm_model_in_flight", "mm_workers", "mm_alerts_firing", "mm_leader", "mm_fence_token"}
    assert expected <= set(families), expected - set(families)
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("mm_up", ())] == 1
    assert value[("mm_jobs_finished_total", (("model", "sim-a:1b"), ("status", "ok")))] >= 2
    assert value[("mm_node_memory_bytes", (("node", "n1"), ("type", "total")))] == MEMORY
    assert value[("mm_model_resident_bytes", (("model", "sim-a:1b"), ("node", "n1")))] == GB
    assert value[("mm_model_loads_total", (("model", "sim-a:1b"), ("node", "n1")))] >= 1
    assert ("mm_queue_depth", (("model", "sim-b:1b"), ("priority", "low"))) in value
    assert value[("mm_job_latency_seconds_count", (("model", "sim-a:1b"),))] >= 2
    firing = [s for s in families["mm_alerts_firing"].samples if "Falcon" in s.labels["subject"]]
    assert firing and firing[0].labels["rule"] == "prediction_accuracy < 0.3"
    stats = get(cluster.url, "/api/stats").json()
    assert any(a["subject"].get("name") == "Falcon" for a in stats["alerts"]["firing"])


# --- auth, limits and bad input --------------------------------------------------------------------

def test_auth_is_required_everywhere_but_health_when_keys_are_set(cluster):
    url, good = cluster.secure_url, {"Authorization": f"Bearer {API_KEY}"}

    for path in ("/api/stats", "/metrics", "/api/tags", "/models/active", "/openapi.json", "/api/models"):
        assert get(url, path).status_code == 401, path
        assert get(url, path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert get(url, path, headers=good).status_code == 200, path
    refused = post(url, "/api/generate", json={"model": "sim-a:1b", "prompt": "hi", "stream": False})
    assert refused.status_code == 401 and refused.json()["field"] == "Authorization"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/health", "/api/health"):
        assert get(url, path).status_code == 200, path
    assert get(url, "/").status_code == 200  # the page shell holds no data; its calls carry the key
    answer = ollama.Client(host=url, headers=good).generate("sim-a:1b", "hi", options=OPTS)
    assert answer.done and answer.response
    with pytest.raises(ollama.ResponseError) as denied:
        ollama.Client(host=url).generate("sim-a:1b", "hi")
    assert denied.value.status_code == 401
    assert get(cluster.url, "/api/stats").status_code == 200  # the gateway without keys needs none


def _enqueued(r: redis.Redis) -> tuple[int, int]:
    queued = sum(r.llen(keys.priority_list(m["name"], step)) for m in MODELS for step in keys.PRIORITY_STEPS)
    return len(r.keys("mm:job:*")), queued


@pytest.mark.parametrize("path, body, headers, status, field", [
    ("/api/submit", b'{"model": "sim-a:1b", "prompt": "\xff\xfe"}', {}, 400, "body"),
    ("/api/submit", b'{"model": "sim-a:1b", "prompt": ', {}, 400, "body"),
    ("/api/submit", b"[" * 5000 + b"]" * 5000, {}, 413, "body"),
    ("/api/submit", b'{"a":' * 40 + b"1" + b"}" * 40, {}, 400, "body"),
    ("/api/submit", b"[" * 1500 + b"]" * 1500, {}, 400, "body"),
    ("/api/submit", b'{"model": "sim-a:1b", "prompt": NaN}', {}, 400, "body"),
    ("/api/submit", b"[1, 2]", {}, 400, "body"),
    ("/api/submit", json.dumps({"model": "no-such:1b", "prompt": "hi"}).encode(), {}, 404, "model"),
    ("/api/submit", json.dumps({"model": "sim-a:1b", "prompt": "x" * (SMALL_PROMPT + 1)}).encode(), {}, 400,
     "prompt"),
    ("/api/submit", json.dumps({"model": "sim-a:1b", "prompt": "hi", "priority": "urgent"}).encode(), {}, 400,
     "priority"),
    ("/api/submit", json.dumps({"model": "sim-a:1b", "prompt": "hi", "options": {"temperature": "hot"}}).encode(),
     {}, 400, "options.temperature"),
    ("/api/submit", json.dumps({"model": "sim-a:1b", "prompt": "hi", "images": ["not base64!"]}).encode(), {}, 400,
     "images[0]"),
    ("/api/submit", json.dumps({"model": "sim-a:1b", "prompt": "hi", "colour": "red"}).encode(), {}, 400, "colour"),
    ("/api/generate", json.dumps({"model": "no-such:1b", "prompt": "hi"}).encode(), {}, 404, "model"),
    ("/api/generate", json.dumps({"model": "sim-a:1b", "prompt": "x" * (SMALL_PROMPT + 1)}).encode(), {}, 400,
     "prompt"),
    ("/api/generate", json.dumps({"model": "sim-a:1b", "prompt": "hi"}).encode(), {"X-MM-Priority": "now"}, 400,
     "X-MM-Priority"),
    ("/api/chat", json.dumps({"model": "sim-a:1b", "messages": [{"role": "robot", "content": "x"}]}).encode(), {},
     400, "messages[0].role"),
    ("/api/embed", json.dumps({"model": "sim-a:1b", "input": ["ok", ""]}).encode(), {}, 400, "prompt[1]"),
    ("/api/models/sim-a:1b/infer", json.dumps({"prompt": "hi", "timeout": -1}).encode(), {}, 400, "timeout"),
    ("/api/metrics", json.dumps({"name": "M", "version": "v1", "prediction_accuracy": float("inf")}).encode(), {}, 400,
     "body"),
])
def test_bad_input_gets_a_4xx_naming_the_field_and_enqueues_nothing(cluster, path, body, headers, status, field):
    before = _enqueued(cluster.r)
    headers = headers | {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    reply = httpx.post(cluster.secure_url + path, content=body, headers=headers, timeout=30)

    assert reply.status_code == status, reply.text
    assert reply.json()["field"] == field and reply.json()["error"]
    assert _enqueued(cluster.r) == before


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(cluster):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    reply = httpx.post(cluster.secure_url + "/api/submit", content=b"x" * (500 * SMALL_BODY), headers=headers,
                       timeout=30)
    assert reply.status_code == 413 and reply.json()["field"] == "body"
    assert get(cluster.secure_url, "/api/health").status_code == 200


def test_unknown_paths_and_methods_answer_json_4xx(cluster):
    missing = get(cluster.url, "/api/nothing-here")
    wrong = httpx.put(f"{cluster.url}/api/submit", timeout=10)
    assert missing.status_code == 404 and missing.json()["field"] == "path"
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert get(cluster.url, "/api/job/not-a-job").status_code == 404
    assert get(cluster.url, "/api/jobs", params={"n": "lots"}).json()["field"] == "n"


# --- OpenAPI, status page, mm top -------------------------------------------------------------------

SCHEMATHESIS_CONFIG = """
[checks]
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
response_headers_conformance.enabled = true
positive_data_acceptance.enabled = true
negative_data_rejection.enabled = true
missing_required_header.enabled = true
ignored_auth.enabled = true
unsupported_method.enabled = true
allow_header_conformance.enabled = true

[[operations]]
include-path = "/stats/{name}/{version}"
# start <= end relates two parameters, which OpenAPI 3.0 cannot state: start > end is a 400.
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/api/pull"
# No leader runs on the empty database schemathesis gets: every pull is the documented 503.
checks.not_a_server_error.enabled = false
"""


def run_schemathesis(cluster, tmp_path: Path, phases: str, examples: int) -> subprocess.CompletedProcess:
    """schemathesis against a gateway on an empty Redis database (so it never finds a model to load or
    wait for), auth on, every check but object-level authorization."""
    db_url = cluster.stack.env["MM_REDIS_URL"].rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(db_url).flushdb()
    env = cluster.stack.env | {"MM_REDIS_URL": db_url}
    proc, url = start_gateway(tmp_path, env, f"gateway-st-{phases}", gateway_api_keys=API_KEY)
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    try:
        return subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
             "-H", f"Authorization: Bearer {API_KEY}", "--phases", phases, "-n", str(examples), "--workers", "1",
             "--seed", "7", "--generation-database", "none", "--no-color", "--request-timeout", "20"],
            capture_output=True, text=True, timeout=600, cwd=str(tmp_path), check=False,
        )
    finally:
        proc.stop()


def test_schemathesis_finds_no_server_error_and_no_deviation_from_the_openapi_document(cluster, tmp_path):
    run = run_schemathesis(cluster, tmp_path, "fuzzing", 25)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", run.stdout)
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert selected and tested and tested.group(1) == selected.group(2), run.stdout[-3000:]


@pytest.mark.slow
def test_schemathesis_coverage_phase_finds_no_deviation(cluster, tmp_path):
    run = run_schemathesis(cluster, tmp_path, "examples,coverage", 10)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_the_status_page_serves_html_and_its_data(cluster):
    page = get(cluster.url, "/")
    script = get(cluster.url, "/static/app.js")
    rollups = get(cluster.url, "/api/rollups", params={"resolution": "minute", "span_s": 3600})
    jobs = get(cluster.url, "/api/jobs", params={"n": 5})

    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text and "/api/stats" in script.text
    assert get(cluster.url, "/static/style.css").status_code == 200
    rows = rollups.json()["models"]["sim-a:1b"]
    assert sum(row["count"] for row in rows) >= 1 and all("p95_latency_s" in row for row in rows)
    assert len(jobs.json()["finished"]) == 5
    schema = schema_of(cluster.url)
    schema["/api/rollups"]["GET"].validate_response(rollups)
    schema["/api/jobs"]["GET"].validate_response(jobs)


def test_mm_top_once_prints_nodes_models_and_queues(cluster):
    run = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "top", "--once"],
                         capture_output=True, text=True, timeout=60, env=cluster.stack.env, cwd=str(REPO),
                         check=False)

    assert run.returncode == 0, run.stderr
    assert "NODES" in run.stdout and "n1" in run.stdout and "budget" in run.stdout
    assert "sim-a:1b" in run.stdout and "QUEUES" in run.stdout and "\x1b[" not in run.stdout
    assert f"{MEMORY / 1e9:.2f} GB" in run.stdout


def test_the_gateway_stops_cleanly_on_sigterm(cluster, tmp_path):
    proc, url = start_gateway(tmp_path, cluster.stack.env, "gateway-stop")
    assert get(url, "/api/health").status_code == 200

    proc.signal(15)

    wait_for(lambda: not proc.alive(), 15, what="gateway exit")
    assert proc.popen.returncode == 0 and "gateway stopped" in proc.output()
    proc.stop()

