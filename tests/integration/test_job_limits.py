"""Limits that keep one client from holding the cluster, against real Redis, real Celery workers, the
sim runtime and live gateways:

- job deadlines: a job not started within its ``deadline_s`` ends ``expired`` and never runs,
  whether it sits queued (the leader takes it off its queue) or a worker takes it late (the worker
  ends it before the runtime call);
- ``MM_MAX_QUEUED_PER_KEY``: a gateway API key with that many jobs waiting to start is answered 429
  until some start, while other keys are served.

One model-worker with one slot and a model that generates 20 tokens a second: a job holding the slot
keeps the next ones queued for as long as a test needs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import redis
from celery import states
from celery.result import AsyncResult

import mm
from mm import client, keys
from mm.app import app
from mm.errors import JobExpired, ValidationError
from mm.gateway.queued_limit import key_id
from mm.validation import JobRequest
from tests.gateway_proc import ollama_stack, start_gateway
from tests.procs import wait_for
from tests.support import GB, sim_model

SLOW = "slow:1b"
MODELS = [sim_model(SLOW, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=20, parallel=1)]
LONG = {"num_predict": 400}  # 20 s, far longer than any test waits
CLI = [sys.executable, "-c", "from mm.cli import main; main()"]
EXPIRED = r"^expired: not started within deadline_s=1 \(waited \d+\.\d s\)"
KEY_A, KEY_B = "key-a-7f3c9e", "key-b-51d2aa"
LIMIT = 2
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def node(redis_server, tmp_path_factory):
    """The node, an open gateway (``gateway_url``: no keys, so no per-key limit) and one with keys A and
    B each allowed LIMIT queued jobs (``keyed_url``)."""
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("limits")
    batches = {"files_dir": tmp / "files", "batch_tick_s": 0.2}
    with ollama_stack(tmp, redis_server.url, MODELS, 2 * GB, slots=1, max_queued_per_key=LIMIT, **batches) as s:
        keyed, s.stack.keyed_url = start_gateway(tmp, s.stack.env, "gateway-keyed", max_queued_per_key=LIMIT,
                                                 gateway_api_keys=f"{KEY_A},{KEY_B}", **batches)
        s.stack.gateway_url = s.url
        try:
            mm.submit(SLOW, "warm up", options={"num_predict": 1}).get(timeout=60)
            yield s.stack
        finally:
            keyed.stop()


@pytest.fixture
def blocker(node):
    """A job holding the worker's only slot for the test, cancelled after it."""
    wait_for(lambda: not node.r.smembers(keys.worker_inflight(node.hostname("w1"))), 30, what="the slot free")
    job = mm.submit(SLOW, "hold the slot", options=LONG)
    wait_for(lambda: job.status() == "running", 30, what=f"job {job.id} to run")
    yield job
    job.cancel(wait=5)


def runtime_calls(node) -> int:
    """The generate/chat/embed calls the runtime answered in full (a cancelled blocker's is not one)."""
    return sum(node.runtime.served().values())


def queued_messages(node) -> int:
    return sum(node.r.llen(keys.priority_list(SLOW, step)) for step in keys.PRIORITY_STEPS)


def test_a_queued_job_past_its_deadline_is_taken_off_its_queue_and_ends_expired(node, blocker):
    calls = runtime_calls(node)
    submitted = time.monotonic()

    job = mm.submit(SLOW, "too late for me", options={"num_predict": 4}, deadline_s=1)

    wait_for(lambda: job.status() == "expired", 10, what=f"job {job.id} to expire")
    took = time.monotonic() - submitted
    with pytest.raises(JobExpired, match=EXPIRED):
        job.get(timeout=5)
    record = job.record()
    assert 1.0 <= took < 4.0, took
    assert "started_at" not in record and record["error"].endswith("it never ran")
    assert AsyncResult(job.id, app=app).state == states.FAILURE  # ended for Celery too: never redelivered
    assert queued_messages(node) == 0 and node.r.zscore(keys.DEADLINES, job.id) is None
    assert blocker.status() == "running"  # it expired while the slot was still held
    assert job.cancel() is False  # expired is final: nothing to cancel
    assert runtime_calls(node) == calls


def test_a_job_a_worker_takes_after_its_deadline_ends_expired_without_running(node, blocker):
    # Given a message whose deadline has passed by the time the worker takes it (as for one
    # redelivered late, or taken before the leader's sweep came by): sent with a submit time of a
    # minute ago and no entry in the deadline set, so only the worker can end it.
    job_id = str(uuid.uuid4())
    request = JobRequest(model=SLOW, kind="generate", priority="normal", prompt="late", messages=None,
                         options={"num_predict": 4}, images=[], metadata={}, stream=True, deadline_s=1)
    submitted_at = time.time() - 60
    client.send(request, job_id, submitted_at)
    node.r.hset(keys.job(job_id), mapping={"id": job_id, "model": SLOW, "priority": "normal", "status": "queued",
                                           "submitted_at": submitted_at, "metadata": "{}"})
    calls = runtime_calls(node)

    blocker.cancel(wait=5)  # the slot frees: the worker takes the message

    job = mm.Job(job_id)
    wait_for(lambda: job.status() == "expired", 10, what="the worker to end it expired")
    with pytest.raises(JobExpired, match=r"deadline_s=1 \(waited 6\d\.\d s\)"):
        list(job.stream(timeout=5))
    assert "started_at" not in job.record() and runtime_calls(node) == calls
    assert node.r.hget(keys.job(job_id), keys.DELIVERIES_FIELD) is None  # never counted as a delivery: never started
    assert mm.submit(SLOW, "next", options={"num_predict": 2}).get(timeout=10)  # the slot is free


def test_a_job_started_within_its_deadline_runs(node):
    job = mm.submit(SLOW, "in time", options={"num_predict": 3}, deadline_s=30)

    result = job.get(timeout=30)

    assert result["timings"]["eval_tokens"] == 3 and job.status() == "complete"


@pytest.mark.parametrize("value", [0, -5, True, "10", float("nan")])
def test_a_bad_deadline_is_refused_before_anything_is_enqueued(node, value):
    jobs_before = len(list(node.r.scan_iter(match="mm:job:*")))

    with pytest.raises(ValidationError) as refused:
        mm.submit(SLOW, "never", deadline_s=value)

    assert refused.value.field == "deadline_s"
    if not isinstance(value, float):  # JSON cannot carry NaN
        answer = httpx.post(f"{node.gateway_url}/api/submit",
                            json={"model": SLOW, "prompt": "never", "deadline_s": value}, timeout=30)
        assert answer.status_code == 400 and answer.json()["field"] == "deadline_s"
    assert len(list(node.r.scan_iter(match="mm:job:*"))) == jobs_before and queued_messages(node) == 0


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": SLOW, "prompt": "x", "stream": False}),
    ("/v1/chat/completions", {"model": SLOW, "messages": [{"role": "user", "content": "x"}]}),
])
def test_a_bad_deadline_header_is_a_400_naming_it(node, path, body):
    answer = httpx.post(f"{node.gateway_url}{path}", json=body, headers={"X-MM-Deadline": "soon"}, timeout=30)

    assert answer.status_code == 400
    error = answer.json()
    assert "X-MM-Deadline" in json.dumps(error) and "seconds" in json.dumps(error)
    assert queued_messages(node) == 0


def test_gateway_requests_whose_jobs_expire_are_answered_504(node, blocker):
    url = node.gateway_url
    ollama = httpx.post(f"{url}/api/generate", json={"model": SLOW, "prompt": "x", "stream": False},
                        headers={"X-MM-Deadline": "1"}, timeout=30)
    streamed = httpx.post(f"{url}/api/chat", json={"model": SLOW, "messages": [{"role": "user", "content": "x"}]},
                          headers={"X-MM-Deadline": "1"}, timeout=30)
    openai = httpx.post(f"{url}/v1/chat/completions", json={"model": SLOW, "messages": [
        {"role": "user", "content": "x"}]}, headers={"X-MM-Deadline": "1"}, timeout=30)
    submitted = httpx.post(f"{url}/api/submit", json={"model": SLOW, "prompt": "x", "deadline_s": 1}, timeout=30)
    job_id = submitted.json()["job_id"]
    wait_for(lambda: mm.Job(job_id).status() == "expired", 10, what=f"job {job_id} to expire")
    view = httpx.get(f"{url}/api/job/{job_id}", timeout=30).json()
    scraped = httpx.get(f"{url}/metrics", timeout=30).text
    stats = httpx.get(f"{url}/api/stats", timeout=30).json()

    assert ollama.status_code == 504 and ollama.json()["error"].startswith("expired: not started within")
    assert streamed.status_code == 504 and "expired: not started within" in streamed.json()["error"]
    assert openai.status_code == 504 and openai.json()["error"]["code"] == "job_expired"
    assert submitted.status_code == 200
    assert view["status"] == "expired" and view["error"].startswith("expired: not started within deadline_s=1")
    expired = re.search(r'^mm_jobs_expired_total\{model="slow:1b"\} (\d+)', scraped, re.M)
    assert expired and int(expired.group(1)) >= 4, scraped[-2000:]  # and among the failed jobs:
    assert stats["queue"]["by_status"]["failed"] >= 4
    assert blocker.status() == "running"


def test_mm_enqueue_deadline_expires_a_job_and_refuses_a_bad_one(node, blocker):
    expired = subprocess.run([*CLI, "enqueue", SLOW, "wait for me", "--deadline", "1", "--wait"],
                             capture_output=True, text=True, timeout=60)
    bad = subprocess.run([*CLI, "enqueue", SLOW, "never", "--deadline", "0"], capture_output=True, text=True,
                         timeout=60)

    assert expired.returncode == 1 and "expired: not started within deadline_s=1" in expired.stderr, expired.stderr
    assert bad.returncode == 1 and "refused before enqueue: deadline_s" in bad.stderr, bad.stderr
    job_id = re.search(r"failed (\S+): expired", expired.stderr).group(1)
    shown = subprocess.run([*CLI, "jobs", "status", job_id], capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["status"] == "expired"


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit_as(node, key: str) -> httpx.Response:
    """POST /api/submit of a short job through the keyed gateway with ``key``."""
    return httpx.post(f"{node.keyed_url}/api/submit", json={"model": SLOW, "prompt": "queued",
                                                             "options": {"num_predict": 2}},
                      headers=as_key(key), timeout=30)


def test_a_key_at_its_limit_is_answered_429_while_another_is_served_until_its_jobs_start(node, blocker):
    url = node.keyed_url
    first, second = submit_as(node, KEY_A), submit_as(node, KEY_A)
    queued = queued_messages(node)

    refused = submit_as(node, KEY_A)
    ollama = httpx.post(f"{url}/api/generate", json={"model": SLOW, "prompt": "x", "stream": False},
                        headers=as_key(KEY_A), timeout=30)
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": SLOW, "messages": [
        {"role": "user", "content": "x"}]}, headers=as_key(KEY_A), timeout=30)
    embeddings = httpx.post(f"{url}/v1/embeddings", json={"model": SLOW, "input": "x"}, headers=as_key(KEY_A),
                            timeout=30)
    other = submit_as(node, KEY_B)

    assert first.status_code == 200 and second.status_code == 200
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert "MM_MAX_QUEUED_PER_KEY" in refused.json()["error"] and KEY_A not in refused.text
    assert ollama.status_code == 429 and ollama.json()["error"].startswith("too many queued jobs")
    for answer in (chat, embeddings):
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "5"
        assert answer.json()["error"]["type"] == "rate_limit_error"
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == 200
    assert queued_messages(node) == queued + 1  # only key B's job was enqueued
    stored = {k.decode(): [m.decode() for m in node.r.zrange(k, 0, -1)]
              for k in node.r.scan_iter(match="mm:gateway:queued:*")}
    assert KEY_A not in json.dumps(stored) and KEY_B not in json.dumps(stored)  # a short hash, never the key

    blocker.cancel(wait=5)  # the slot frees: key A's first job starts
    started = mm.Job(first.json()["job_id"])
    wait_for(lambda: started.status() in ("running", "complete"), 10, what="key A's first job to start")

    assert submit_as(node, KEY_A).status_code == 200


def test_a_place_held_by_a_job_that_left_the_queue_is_given_back(node, blocker):
    held = [submit_as(node, KEY_A) for _ in range(LIMIT)]
    assert submit_as(node, KEY_A).status_code == 429

    cancelled = httpx.delete(f"{node.keyed_url}/api/job/{held[0].json()['job_id']}", headers=as_key(KEY_A),
                             timeout=30)

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert submit_as(node, KEY_A).status_code == 200  # the cancelled job's place was pruned
    assert submit_as(node, KEY_A).status_code == 429


def test_without_api_keys_no_key_is_limited(node, blocker):
    answers = [httpx.post(f"{node.gateway_url}/api/submit", json={"model": SLOW, "prompt": "open",
                                                                  "options": {"num_predict": 2}}, timeout=30)
               for _ in range(LIMIT + 2)]

    assert [a.status_code for a in answers] == [200] * (LIMIT + 2)


def test_a_batchs_requests_do_not_count_against_its_key(node, blocker):
    url = node.keyed_url
    assert [submit_as(node, KEY_A).status_code for _ in range(LIMIT)] == [200] * LIMIT
    queued = queued_messages(node)
    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
        "model": SLOW, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}}) + "\n" for i in range(3))

    uploaded = httpx.post(f"{url}/v1/files", files={"file": ("requests.jsonl", lines.encode())},
                          data={"purpose": "batch"}, headers=as_key(KEY_A), timeout=30)
    batch = httpx.post(f"{url}/v1/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": CHAT,
                                                  "completion_window": "24h"}, headers=as_key(KEY_A), timeout=30)

    assert batch.status_code == 200, batch.text
    wait_for(lambda: queued_messages(node) == queued + 3, 15, what="the batch's requests to be enqueued")
    assert node.r.zcard(keys.gateway_queued(key_id(KEY_A))) == LIMIT  # the batch's jobs are not the key's
    assert submit_as(node, KEY_A).status_code == 429
