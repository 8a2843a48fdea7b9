"""Jobs end to end: mm.submit -> per-model queue -> fenced broker decision -> bound worker -> result.

Real redis-server, real Celery worker processes, the embedded runtime's sim engine.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys

import pytest

import mm
from mm import keys, registry
from mm.app import LOAD_TASK, app
from mm.errors import JobFailed, StaleToken, UnknownModel, ValidationError
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack, sim_node
from tests.support import GB, sim_model

# Three models of 1 GB; 1.8 GB of memory holds one of them at a time.
MODELS = [
    sim_model(name, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=2_000, parallel=4)
    for name in ("sim-a:1b", "sim-b:1b", "sim-c:1b")
]
MEMORY = 1_800_000_000
OPTS = {"num_predict": 16, "seed": 1}


@pytest.fixture
def runtime(tmp_path, redis_url):
    rt = start_runtime(tmp_path, engine="sim", models=MODELS, memory=MEMORY)
    yield rt
    rt.stop()


@pytest.fixture
def stack(tmp_path, redis_url, runtime):
    s = Stack(tmp_path, redis_url, runtime.url, memory_budget=MEMORY, safety_margin=100_000_000)
    s.start_broker()
    s.start_worker("w1", slots=2)
    s.start_worker("w2", slots=2)
    s.wait_ready([m["name"] for m in MODELS], ["w1", "w2"])
    yield s
    s.stop()


def load_events(r) -> list[dict]:
    return [json.loads(e[b"event"]) for _id, e in r.xrange(keys.EVENTS) if json.loads(e[b"event"])["kind"] == "load"]


def queue_lengths(r) -> dict[str, int]:
    return {
        keys.priority_list(m["name"], step): r.llen(keys.priority_list(m["name"], step))
        for m in MODELS for step in keys.PRIORITY_STEPS
    }


def test_sixty_mixed_priority_jobs_across_three_models_complete_with_few_loads(stack):
    rng = random.Random(7)
    jobs = [
        mm.submit(rng.choice(MODELS)["name"], f"question {i}", priority=rng.choice(["high", "normal", "low"]),
                  options=OPTS)
        for i in range(60)
    ]
    results = [job.get(timeout=120) for job in jobs]

    assert all(job.status() == "complete" for job in jobs)
    assert all(res["response"] and res["timings"]["eval_tokens"] == 16 for res in results)
    loads = load_events(stack.r)
    assert 3 <= len(loads) <= 12, f"{len(loads)} loads for 60 jobs"


def test_no_job_makes_the_runtime_load_a_model_itself(stack):
    jobs = [mm.submit(m["name"], "hello", options=OPTS) for m in MODELS for _ in range(5)]

    results = [job.get(timeout=120) for job in jobs]

    # The runtime reports a load_duration only when a request had to load the model.
    assert all(res["timings"]["runtime_load_s"] < 0.05 for res in results), [r["timings"] for r in results]
    assert len(stack.resident()) <= 1


def test_high_priority_job_overtakes_a_low_priority_backlog(stack):
    model = MODELS[0]["name"]
    slow = {"num_predict": 100, "seed": 2}  # 50 ms of eval each at 2,000 tokens/s
    low = [mm.submit(model, f"low {i}", priority="low", options=slow) for i in range(20)]
    high = mm.submit(model, "urgent", priority="high", options=slow)

    for job in [*low, high]:
        job.get(timeout=120)

    finished = sorted([*low, high], key=lambda j: float(j.record()["completed_at"]))
    assert finished.index(high) < 10, f"high finished {finished.index(high) + 1}th of 21"


def test_results_carry_queue_wait_load_and_token_timings(stack):
    result = mm.generate(MODELS[1]["name"], "time me", options=OPTS, timeout=60)

    timings = result["timings"]
    assert timings["queue_wait_s"] >= 0
    assert timings["load_s"] == pytest.approx(0.25, rel=0.5)  # 1 GB at 4 GB/s, loaded for this job
    assert timings["eval_tokens"] == 16 and timings["prompt_tokens"] > 0
    assert timings["tokens_per_s"] == pytest.approx(2000, rel=0.15)
    assert result["node"] == stack.node


def test_a_second_broker_takes_over_when_the_leader_is_killed(stack):
    stack.start_broker("standby")
    wait_for(lambda: stack.r.get(keys.BROKER_LEASE), 30, what="a leader")
    first_owner = stack.r.get(keys.BROKER_LEASE).decode()
    first_token = int(stack.r.get(keys.FENCE))
    leader_name = "broker" if first_owner.startswith(stack.hostname("broker")) else "standby"

    stack.procs[leader_name].signal(signal.SIGKILL)

    new_owner = wait_for(lambda: (o := stack.r.get(keys.BROKER_LEASE)) and o.decode() != first_owner and o.decode(),
                         30, what="the standby to take the lease")
    assert int(stack.r.get(keys.FENCE)) > first_token
    assert not new_owner.startswith(stack.hostname(leader_name))
    # The new leader schedules: a job completes.
    assert mm.generate(MODELS[2]["name"], "still there?", options=OPTS, timeout=60)["response"]


def test_a_stale_fencing_token_is_refused(stack):
    model = MODELS[0]["name"]
    stack.r.set(keys.node_fence_seen(stack.node), 10**9)  # a newer leader has spoken

    result = app.send_task(LOAD_TASK, kwargs={"model": model, "token": 5}, queue=keys.node_queue(stack.node))

    with pytest.raises(StaleToken):
        result.get(timeout=30)
    assert model not in stack.resident()


def test_bad_input_is_rejected_before_anything_is_enqueued(stack):
    model = MODELS[0]["name"]
    before = queue_lengths(stack.r)
    bad_calls = [
        (UnknownModel, lambda: mm.submit("no-such-model:1b", "hi")),
        (ValidationError, lambda: mm.submit(model, "")),
        (ValidationError, lambda: mm.submit(model, "x" * 200_001)),
        (ValidationError, lambda: mm.submit(model, "hi", priority="urgent")),
        (ValidationError, lambda: mm.submit(model, "hi", options={"temperature": "hot"})),
        (ValidationError, lambda: mm.submit(model, "hi", options={"num_predict": 1.5})),
        (ValidationError, lambda: mm.submit(model, "hi", images=["not base64!"])),
        (ValidationError, lambda: mm.submit(model, kind="chat", messages=[{"role": "wizard", "content": "x"}])),
        (ValidationError, lambda: mm.submit(model, "hi", kind="summarize")),
    ]
    for error, call in bad_calls:
        with pytest.raises(error):
            call()

    assert queue_lengths(stack.r) == before
    assert not stack.r.keys("mm:job:*")


def test_chat_and_embed_jobs_run(stack):
    chat = mm.submit(MODELS[0]["name"], kind="chat", messages=[{"role": "user", "content": "hi"}], options=OPTS)
    embed = mm.submit(MODELS[0]["name"], ["one", "two"], kind="embed")

    assert chat.get(timeout=60)["message"]["role"] == "assistant"
    vectors = embed.get(timeout=60)["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) > 0


def test_a_model_larger_than_every_node_fails_its_jobs_with_a_reason(tmp_path, redis_url):
    big = [sim_model("huge:70b", size=40 * GB, load_bandwidth=40 * GB)]
    rt = start_runtime(tmp_path, engine="sim", models=big, memory=100 * GB)
    s = Stack(tmp_path, redis_url, rt.url, memory_budget=MEMORY)
    try:
        s.start_broker()
        s.wait_ready(["huge:70b"], [])
        job = mm.submit("huge:70b", "too big")
        with pytest.raises(JobFailed, match="more than the largest node"):
            job.get(timeout=30)
        assert job.status() == "failed"
    finally:
        s.stop()
        rt.stop()


def test_registry_learns_the_real_size_after_a_load(stack):
    model = MODELS[2]["name"]
    assert registry.get(stack.r, model).size == int(GB * 1.3)  # the tag's size x the multiplier

    mm.generate(model, "learn", options=OPTS, timeout=60)

    assert registry.get(stack.r, model).learned_size == GB


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_enqueue_waits_for_one_job_and_prints_its_output(stack):
    done = run_cli("enqueue", MODELS[0]["name"], "hello there", "--priority", "high", "--wait", "--num-predict", "8")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert json.loads(done.stderr.strip().splitlines()[-2])["eval_tokens"] == 8


def test_cli_random_load_ends_with_a_summary(stack):
    done = run_cli("enqueue", "--random", "12", "--num-predict", "4", "--seed", "3")

    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("completed 12, failed 0, p50 "), summary
    assert "loads " in summary


def test_cli_refuses_bad_input_without_enqueueing(stack):
    before = queue_lengths(stack.r)

    done = run_cli("enqueue", MODELS[0]["name"], "")

    assert done.returncode != 0 and "prompt" in done.stderr
    assert queue_lengths(stack.r) == before


def test_a_streaming_job_relays_chunks_as_they_come_and_ends_with_the_durations(stack):
    job = mm.submit(MODELS[0]["name"], "stream to me", stream=True, options={"num_predict": 20, "seed": 4})

    chunks = list(job.stream(timeout=60))

    assert len(chunks) == 21 and chunks[-1]["done"] is True
    assert all(not c["done"] for c in chunks[:-1])
    assert chunks[-1]["eval_count"] == 20 and chunks[-1]["eval_duration"] > 0
    text = "".join(c.get("response", "") for c in chunks)
    assert job.get(timeout=10)["response"] == text


def test_a_streaming_chat_job_streams_message_parts(stack):
    job = mm.submit(MODELS[1]["name"], kind="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
                    options={"num_predict": 6})

    chunks = list(job.stream(timeout=60))

    assert "".join(c["message"]["content"] for c in chunks) == job.get(timeout=10)["message"]["content"]


def test_mm_check_reports_live_parts_healthy_and_names_missing_ones(stack):
    assert run_cli("check", "--node", stack.node, "--worker", stack.hostname("w1")).returncode == 0

    missing = run_cli("check", "--worker", "nobody@nowhere")

    assert missing.returncode == 1 and "nobody@nowhere" in missing.stderr


def test_an_embedding_only_model_is_loaded_and_serves_embed_jobs(tmp_path, redis_url):
    models = [sim_model("embed-only:1b", kind="embed", size=GB // 2, load_bandwidth=4 * GB)]
    with sim_node(tmp_path, redis_url, models, MEMORY) as s:
        vectors = mm.submit("embed-only:1b", ["a", "b", "c"], kind="embed").get(timeout=60)["embeddings"]

        assert len(vectors) == 3
        assert s.resident() == ["embed-only:1b"]


@pytest.mark.llama
def test_a_model_that_never_loads_fails_its_jobs_with_the_runtimes_error(tmp_path, redis_url):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file" * 1000)
    rt = start_runtime(tmp_path, engine="sim", models=[{"name": "broken:1b", "engine": "llama", "path": str(broken)}])
    s = Stack(tmp_path, redis_url, rt.url, memory_budget=MEMORY)
    try:
        s.start_broker()
        s.start_worker("w1")
        s.wait_ready(["broken:1b"], ["w1"])
        job = mm.submit("broken:1b", "hello")

        with pytest.raises(JobFailed, match="failed to load 3 times"):
            job.get(timeout=60)
    finally:
        s.stop()
        rt.stop()
