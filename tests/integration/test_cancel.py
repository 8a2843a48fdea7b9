"""Cancelling jobs against real Redis, real Celery workers, the sim runtime and a live gateway: from
Python, the CLI and ``DELETE /api/job/<id>``; a gateway client that hangs up cancels its job.

One model-worker with one slot and a model that generates 20 tokens a second, so a job runs for
seconds and the next one can start only once the slot is free.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis

import mm
from mm import keys
from mm.errors import JobCancelled, UnknownJob
from tests.gateway_proc import start_gateway
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

SLOW = "slow:1b"
MODELS = [sim_model(SLOW, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=20, parallel=1)]
LONG = {"num_predict": 400}  # 20 s, far longer than any test waits
CLI = [sys.executable, "-c", "from mm.cli import main; main()"]


@pytest.fixture(scope="module")
def node(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("cancel")
    with sim_node(tmp, redis_server.url, MODELS, 2 * GB, slots=1, runtime_retries=0) as stack:
        proc, url = start_gateway(tmp, stack.env, "gateway")
        stack.gateway_url = url
        try:
            mm.submit(SLOW, "warm up", options={"num_predict": 1}).get(timeout=60)
            yield stack
        finally:
            proc.stop()


@pytest.fixture(autouse=True)
def idle_slot(node):
    """Every test starts with the worker's slot free and leaves it so."""
    wait_for(lambda: not node.r.smembers(keys.worker_inflight(node.hostname("w1"))), 30, what="the slot free")
    yield
    for raw in node.r.smembers(keys.worker_inflight(node.hostname("w1"))):
        mm.Job(raw.decode()).cancel(wait=5)


def running(job: mm.Job, timeout: float = 30) -> None:
    wait_for(lambda: job.status() == "running", timeout, what=f"job {job.id} to run")


def gone_lines(node) -> int:
    return sum(1 for line in node.runtime.output().splitlines() if "POST /api/" in line and "client=gone" in line)


def answered(node) -> int:
    return sum(node.runtime.served().values())


def test_a_cancelled_queued_job_never_runs_and_ends_cancelled(node):
    blocker = mm.submit(SLOW, "hold the slot", options=LONG)
    running(blocker)
    queued = mm.submit(SLOW, "never run me", options={"num_predict": 4})
    before = answered(node)

    assert queued.cancel() is True

    assert queued.status() == "cancelled" and "started_at" not in queued.record()
    with pytest.raises(JobCancelled, match="^cancelled: "):
        queued.get(timeout=5)
    assert queued.cancel() is False  # ended: nothing changes
    assert blocker.cancel(wait=5) is True and blocker.status() == "cancelled"
    time.sleep(1)
    assert answered(node) == before  # neither answered in full
    assert not any(node.r.lrange(keys.priority_list(SLOW, s), 0, -1) for s in keys.PRIORITY_STEPS)


def test_a_message_a_worker_meets_after_its_cancel_ends_cancelled_without_running(node):
    # Given a queued job whose cancel marker is written while its message is out of reach (as for a
    # message in flight, or redelivered after its worker died)
    blocker = mm.submit(SLOW, "hold the slot", options=LONG)
    running(blocker)
    later = mm.submit(SLOW, "met later", options={"num_predict": 4}, stream=True)
    node.r.set(keys.cancel(later.id), "cancelled: while its message was in flight", ex=600)
    before = answered(node)

    blocker.cancel(wait=5)  # the slot frees: the worker takes the message

    wait_for(lambda: later.status() == "cancelled", 10, what="the worker to end it cancelled")
    with pytest.raises(JobCancelled, match="in flight"):
        list(later.stream(timeout=5))
    assert "started_at" not in later.record() and answered(node) == before


def test_a_cancelled_running_job_stops_its_runtime_call_and_frees_its_slot_at_once(node):
    job = mm.submit(SLOW, "a long story", options=LONG, stream=True)
    running(job)
    first = next(job.stream(timeout=10))
    gone_before = gone_lines(node)

    started = time.monotonic()
    assert job.cancel(wait=5) is True
    took = time.monotonic() - started

    assert job.status() == "cancelled" and took < 2.0, took
    with pytest.raises(JobCancelled):
        job.get(timeout=5)
    assert first["response"] is not None
    wait_for(lambda: gone_lines(node) > gone_before, 5, what="the runtime to log the request ended client=gone")
    after = mm.submit(SLOW, "next", options={"num_predict": 2}).get(timeout=5)
    assert after["timings"]["queue_wait_s"] < 1.0


def test_mm_jobs_cancel_cancels_once_and_then_says_the_job_has_ended(node):
    job = mm.submit(SLOW, "from the cli", options=LONG)
    running(job)

    first = subprocess.run([*CLI, "jobs", "cancel", job.id], capture_output=True, text=True, timeout=60)
    again = subprocess.run([*CLI, "jobs", "cancel", job.id], capture_output=True, text=True, timeout=60)
    unknown = subprocess.run([*CLI, "jobs", "cancel", "no-such-job"], capture_output=True, text=True, timeout=60)

    assert first.returncode == 0 and f"cancelled {job.id}" in first.stdout, first.stderr
    assert again.returncode == 1 and "has ended (cancelled)" in again.stderr
    assert unknown.returncode == 1 and "no job no-such-job" in unknown.stderr
    assert "cancelled from the command line" in job.record()["error"]


def test_delete_api_job_cancels_a_running_job_then_answers_409_and_404(node):
    job = mm.submit(SLOW, "over http", options=LONG)
    running(job)
    url = f"{node.gateway_url}/api/job"

    cancelled = httpx.delete(f"{url}/{job.id}", timeout=30)
    again = httpx.delete(f"{url}/{job.id}", timeout=30)
    unknown = httpx.delete(f"{url}/no-such-job", timeout=30)
    view = httpx.get(f"{url}/{job.id}", timeout=30).json()

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409 and "has ended (cancelled)" in again.json()["error"]
    assert unknown.status_code == 404
    assert view["status"] == "cancelled" and view["error"].startswith("cancelled: ")
    with pytest.raises(UnknownJob):
        mm.Job("no-such-job").cancel()


def test_a_gateway_request_whose_job_is_cancelled_is_answered_409(node):
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{node.gateway_url}/api/generate", json={"model": SLOW, "prompt": "wait", "stream": False,
                                                  "options": LONG}, timeout=60)))
    waiter.start()
    wait_for(lambda: node.r.smembers(keys.worker_inflight(node.hostname("w1"))), 30, what="the job to run")
    job_id = next(iter(node.r.smembers(keys.worker_inflight(node.hostname("w1"))))).decode()

    assert httpx.delete(f"{node.gateway_url}/api/job/{job_id}", timeout=30).status_code == 200
    waiter.join(30)

    assert answers[0].status_code == 409 and "cancelled: " in answers[0].json()["error"]


def hang_up_streaming(url: str, path: str, body: dict) -> str:
    """Read the first streamed line of ``body`` at ``path``, then close the connection; the job id."""
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}{path}", json=body) as response:
        assert response.status_code == 200
        next(response.iter_lines())
        return response.headers["X-MM-Job-Id"]


OLLAMA_GENERATE = {"model": SLOW, "prompt": "talk", "options": LONG}
OPENAI_CHAT = {"model": SLOW, "messages": [{"role": "user", "content": "talk"}], "max_tokens": 400}


@pytest.mark.parametrize("path, body", [
    ("/api/generate", OLLAMA_GENERATE | {"stream": True}),
    ("/v1/chat/completions", OPENAI_CHAT | {"stream": True}),
])
def test_a_streaming_client_that_hangs_up_cancels_its_job(node, path, body):
    gone_before = gone_lines(node)

    job_id = hang_up_streaming(node.gateway_url, path, body)

    wait_for(lambda: mm.Job(job_id).status() == "cancelled", 5, what=f"job {job_id} cancelled")
    assert "disconnected" in mm.Job(job_id).record()["error"]
    wait_for(lambda: gone_lines(node) > gone_before, 5, what="the runtime call closed")
    assert mm.submit(SLOW, "next", options={"num_predict": 2}).get(timeout=5)


@pytest.mark.parametrize("path, body", [
    ("/api/generate", OLLAMA_GENERATE | {"stream": False}),
    ("/v1/chat/completions", OPENAI_CHAT),
    (f"/api/models/{SLOW}/infer", {"prompt": "talk", "options": LONG}),
])
def test_a_waiting_client_that_hangs_up_cancels_its_job(node, path, body):
    submitted = time.time()

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{node.gateway_url}{path}", json=body, timeout=httpx.Timeout(30, read=2.0))

    job_id = newest_job(node, submitted)
    wait_for(lambda: mm.Job(job_id).status() == "cancelled", 5, what=f"job {job_id} cancelled")
    assert "disconnected" in mm.Job(job_id).record()["error"]
    assert mm.submit(SLOW, "next", options={"num_predict": 2}).get(timeout=5)


def newest_job(node, since: float) -> str:
    """The id of the job submitted last after ``since`` (from the job records)."""
    found = []
    for key in node.r.scan_iter(match="mm:job:*"):
        submitted_at = node.r.hget(key, "submitted_at")
        if submitted_at and float(submitted_at) >= since:
            found.append((float(submitted_at), key.decode().removeprefix("mm:job:")))
    assert found, "no job submitted"
    return max(found)[1]


def test_a_job_submitted_with_api_submit_outlives_its_connection(node):
    with httpx.Client(timeout=30) as http:
        answer = http.post(f"{node.gateway_url}/api/submit",
                           json={"model": SLOW, "prompt": "keep going", "options": {"num_predict": 30}})
    job_id = answer.json()["job_id"]

    result = mm.Job(job_id).get(timeout=30)

    assert result["timings"]["eval_tokens"] == 30 and mm.Job(job_id).status() == "complete"
