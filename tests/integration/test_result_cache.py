"""The result cache end to end: real redis-server, Celery worker processes, the sim runtime and the gateway.

A job the runtime ran leaves one raw metrics sample (``mm:metrics:raw``); an answer from the
cache leaves none, so the stream's length counts the runtime's calls.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import httpx
import pytest
import redis

import mm
from mm import keys, registry, result_cache, store
from mm.settings import Settings
from tests.gateway_proc import start_gateway
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

MODEL = "sim-cache:1b"
MODELS = [sim_model(MODEL, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=2_000, parallel=4)]
MEMORY = 4 * GB
TTL_S = 8.0
OPTS = {"num_predict": 6, "seed": 3}


@pytest.fixture(scope="module")
def node(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("result-cache")
    with sim_node(tmp, redis_server.url, MODELS, MEMORY, runtime_retries=0, cache_ttl_s=TTL_S) as stack:
        proc, stack.gateway_url = start_gateway(tmp, stack.env, "gateway")
        try:
            yield stack
        finally:
            proc.stop()


@pytest.fixture
def r(node):
    """The stack's Redis, the cache emptied and its registry entry restored before each test."""
    client = store.connect()
    for key in client.scan_iter("mm:cache:*"):
        client.delete(key)
    yield client


def runtime_calls(r) -> int:
    return r.xlen(keys.METRICS_RAW)


def ran(r, calls: int) -> bool:
    """Whether the runtime was called ``calls`` times (waiting for samples the closing writes still owe)."""
    try:
        wait_for(lambda: runtime_calls(r) >= calls, 10, what=f"{calls} runtime calls")
    except AssertionError:  # the count below says what happened
        pass
    return runtime_calls(r) == calls


def wait_stored(r, stores: int) -> None:
    """Until the worker's closing writes stored ``stores`` results (they follow the job's outcome)."""
    wait_for(lambda: result_cache.stats(r)["stores"] >= stores, 15, what=f"{stores} cache stores")


def test_a_repeated_deterministic_request_is_answered_from_the_cache_without_running(r):
    first = mm.submit(MODEL, "Why is the sky blue?", options=OPTS, cache=True).get(timeout=60)
    wait_stored(r, 1)
    calls = runtime_calls(r)

    job = mm.submit(MODEL, "Why is the sky blue?", options=OPTS, cache=True, priority="high",
                    metadata={"run": "again"})
    again = job.get(timeout=10)

    assert again["response"] == first["response"] and again["id"] == job.id != first["id"]
    assert again["timings"]["cached"] is True and "cached" not in first["timings"]
    assert again["timings"]["eval_tokens"] == first["timings"]["eval_tokens"]
    assert job.status() == "complete" and job.record()["cached"] == "1"
    assert runtime_calls(r) == calls
    assert result_cache.stats(r)["hits"] == 1 and result_cache.stats(r)["models"][MODEL]["hits"] == 1


def test_without_cache_allowed_an_identical_request_runs_again(r):
    mm.submit(MODEL, "no cache please", options=OPTS, cache=True).get(timeout=60)
    wait_stored(r, 1)
    calls = runtime_calls(r)

    result = mm.generate(MODEL, "no cache please", options=OPTS, timeout=60)

    assert "cached" not in result["timings"] and ran(r, calls + 1)


def test_a_changed_option_misses(r):
    mm.submit(MODEL, "change an option", options=OPTS, cache=True).get(timeout=60)
    wait_stored(r, 1)
    calls = runtime_calls(r)

    result = mm.submit(MODEL, "change an option", options=OPTS | {"num_predict": 7}, cache=True).get(timeout=60)

    assert "cached" not in result["timings"] and result["timings"]["eval_tokens"] == 7
    assert ran(r, calls + 1) and result_cache.stats(r)["misses"] == 2


def test_a_non_deterministic_request_runs_and_is_not_stored(r):
    for _ in range(2):
        result = mm.submit(MODEL, "be creative", options={"num_predict": 4, "temperature": 0.8},
                           cache=True).get(timeout=60)
        assert "cached" not in result["timings"]

    stats = result_cache.stats(r)
    assert stats["stores"] == 0 and stats["hits"] == stats["misses"] == 0 and stats["entries"] == 0


def test_a_model_with_a_new_digest_never_serves_the_older_answer(r):
    mm.submit(MODEL, "which version?", options=OPTS, cache=True).get(timeout=60)
    wait_stored(r, 1)
    entry = registry.get(r, MODEL)
    calls = runtime_calls(r)
    try:
        registry.save(r, replace(entry, digest="f" * 64))  # re-pulled: another version of the model

        result = mm.submit(MODEL, "which version?", options=OPTS, cache=True).get(timeout=60)

        assert "cached" not in result["timings"] and ran(r, calls + 1)
    finally:
        registry.save(r, replace(registry.get(r, MODEL), digest=entry.digest))


def test_an_entry_expires_after_its_ttl(r):
    mm.submit(MODEL, "short-lived", options=OPTS, cache=True).get(timeout=60)
    wait_stored(r, 1)
    assert mm.submit(MODEL, "short-lived", options=OPTS, cache=True).get(timeout=10)["timings"].get("cached")

    time.sleep(TTL_S + 0.5)
    result = mm.submit(MODEL, "short-lived", options=OPTS, cache=True).get(timeout=60)

    assert "cached" not in result["timings"]


def test_a_streaming_request_streams_the_cached_answer_through_job_stream(r):
    first = mm.submit(MODEL, "stream me a story", options=OPTS, cache=True, stream=True)
    streamed = list(first.stream(timeout=60))
    wait_stored(r, 1)

    again = mm.submit(MODEL, "stream me a story", options=OPTS, cache=True, stream=True)
    chunks = list(again.stream(timeout=10))

    text = "".join(c["response"] for c in chunks)
    assert text == "".join(c["response"] for c in streamed) == again.get(timeout=5)["response"]
    assert len(chunks) > 2 and chunks[-1]["done"] and chunks[-1]["eval_count"] == OPTS["num_predict"]
    # Answered at submit from the cache: never started by a worker (the module's runtime-call count
    # can move meanwhile with an earlier test's closing writes).
    record = again.record()
    assert record.get("cached") == "1" and "worker" not in record, record


def ollama_stream(url: str, body: dict, headers: dict) -> tuple[str, str]:
    """(the job id, the text) of a streamed /api/generate."""
    with httpx.stream("POST", url + "/api/generate", json=body, headers=headers, timeout=60) as reply:
        assert reply.status_code == 200, reply.read()
        lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
        job_id = reply.headers["X-MM-Job-Id"]
    assert lines[-1]["done"] is True
    return job_id, "".join(line["response"] for line in lines)


def test_the_ollama_proxy_streams_a_cached_answer_with_x_mm_cache_use(node, r):
    body = {"model": MODEL, "prompt": "proxy me", "options": OPTS}
    first_id, first = ollama_stream(node.gateway_url, body, {"X-MM-Cache": "use"})
    wait_stored(r, 1)
    calls = runtime_calls(r)

    job_id, text = ollama_stream(node.gateway_url, body, {"X-MM-Cache": "use"})
    whole = httpx.post(node.gateway_url + "/api/generate", json=body | {"stream": False},
                       headers={"X-MM-Cache": "use"}, timeout=60).json()
    _off_id, _ = ollama_stream(node.gateway_url, body, {"X-MM-Cache": "off"})

    assert text == first == whole["response"] and job_id != first_id
    assert mm.Job(job_id).record()["cached"] == "1"
    assert ran(r, calls + 1)  # only the request with the cache off ran
    view = httpx.get(f"{node.gateway_url}/api/job/{job_id}", timeout=30).json()
    assert view["status"] == "complete" and view["result"] == text and view["timings"]["cached"] is True
    bad = httpx.post(node.gateway_url + "/api/generate", json=body, headers={"X-MM-Cache": "maybe"}, timeout=30)
    assert bad.status_code == 400


def test_the_job_api_submits_with_x_mm_cache_use(node, r):
    body = {"model": MODEL, "prompt": "job api", "options": OPTS}
    first = httpx.post(node.gateway_url + "/api/submit", json=body, headers={"X-MM-Cache": "use"}, timeout=30).json()
    mm.Job(first["job_id"]).get(timeout=60)
    wait_stored(r, 1)

    again = httpx.post(node.gateway_url + "/api/submit", json=body, headers={"X-MM-Cache": "use"}, timeout=30).json()

    assert mm.Job(again["job_id"]).get(timeout=10)["timings"]["cached"] is True


def openai_stream(url: str, body: dict) -> tuple[str, str]:
    """(the job id, the text) of a streamed /v1/chat/completions."""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"X-MM-Cache": "use"},
                      timeout=60) as reply:
        assert reply.status_code == 200, reply.read()
        events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
        job_id = reply.headers["X-MM-Job-Id"]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
              if json.loads(e).get("choices")]
    return job_id, "".join(deltas)


def test_the_openai_api_streams_a_cached_answer_as_server_sent_events(node, r):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello from openai"}], "stream": True,
            "max_tokens": 6, "temperature": 0}
    _first_id, first = openai_stream(node.gateway_url, body)
    wait_stored(r, 1)
    calls = runtime_calls(r)

    job_id, text = openai_stream(node.gateway_url, body)

    assert text == first and text
    assert mm.Job(job_id).record()["cached"] == "1" and runtime_calls(r) == calls


def test_prometheus_counts_cache_hits_and_misses(node, r):
    for _ in range(3):
        mm.submit(MODEL, "count me", options=OPTS, cache=True).get(timeout=60)
        wait_stored(r, 1)

    text = httpx.get(node.gateway_url + "/metrics", timeout=30).text

    assert f'mm_cache_hits_total{{model="{MODEL}"}} 2.0' in text
    assert f'mm_cache_misses_total{{model="{MODEL}"}} 1.0' in text
    assert "mm_cache_stores_total 1.0" in text


# --- the store itself, against the real Redis: TTL, the memory bound, concurrent writers ----------------

def put(r, key: str, result: dict, settings: Settings) -> None:
    pipe = r.pipeline(transaction=False)
    result_cache.put(pipe, key, result, settings)
    pipe.execute()


def cached(r, key: str) -> bool:
    return r.exists(key) == 1


def answer(n: int) -> dict:
    return {"model": MODEL, "kind": "generate", "response": f"answer {n:03d} " + "x" * 200, "timings": {}}


def size_of(n: int) -> int:
    return len(json.dumps(answer(n), separators=(",", ":"))) + len(keys.cache_entry("0" * 64))


def test_the_memory_bound_evicts_the_least_recently_used_first(r):
    settings = Settings(cache_max_bytes=3 * size_of(0) + 10, cache_ttl_s=60)
    names = [keys.cache_entry(f"{n:064d}") for n in range(4)]
    for n in range(3):
        put(r, names[n], answer(n), settings)
    r.register_script(result_cache._GET)(keys=[names[0], keys.CACHE_LRU, keys.CACHE_STATS], args=[MODEL])  # use 0

    put(r, names[3], answer(3), settings)

    assert [cached(r, k) for k in names] == [True, False, True, True]  # 1 was the least recently used
    stats = result_cache.stats(r)
    assert stats["evictions"] == 1 and stats["entries"] == 3 and stats["bytes"] <= settings.cache_max_bytes
    assert stats["bytes"] == sum(int(v) for v in r.hvals(keys.CACHE_SIZES))


def test_an_entry_larger_than_the_bound_is_not_stored(r):
    put(r, keys.cache_entry("1" * 64), answer(1), Settings(cache_max_bytes=100))
    assert result_cache.stats(r)["entries"] == 0 and result_cache.stats(r)["bytes"] == 0


def test_expired_entries_are_swept_from_the_count(r):
    short = Settings(cache_ttl_s=0.2)
    put(r, keys.cache_entry("2" * 64), answer(2), short)
    time.sleep(0.4)
    assert not cached(r, keys.cache_entry("2" * 64))

    put(r, keys.cache_entry("3" * 64), answer(3), short)

    assert result_cache.stats(r)["entries"] == 1 and result_cache.stats(r)["bytes"] == size_of(3)


def test_concurrent_writers_keep_the_byte_counter_right(r):
    settings = Settings(cache_max_bytes=20 * size_of(0), cache_ttl_s=60)

    def writer(w: int) -> None:
        client = redis.Redis.from_url(node_url(r))
        for n in range(40):
            put(client, keys.cache_entry(f"{w}{n % 25:063d}"), answer(n), settings)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    stats = result_cache.stats(r)
    assert stats["bytes"] == sum(int(v) for v in r.hvals(keys.CACHE_SIZES)) <= settings.cache_max_bytes
    assert stats["entries"] == r.hlen(keys.CACHE_SIZES) == len(list(r.scan_iter("mm:cache:e:*")))


def node_url(r) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
