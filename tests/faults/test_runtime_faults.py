"""The runtime down or slow: bounded retries with backoff, then a clear failure; queued jobs complete once it is
back."""

from __future__ import annotations

import signal
import time

import ollama
import pytest

import mm
from mm import registry
from mm.errors import JobFailed
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack, sim_node
from tests.support import GB, sim_model

MODEL = sim_model("fragile:1b", load_bandwidth=10 * GB, eval_rate=40)
LONG = {"num_predict": 200}  # five seconds of generation
SHORT = {"num_predict": 4}


def test_a_runtime_that_dies_fails_the_running_job_clearly_and_queued_jobs_run_once_it_is_back(tmp_path, redis_url,
                                                                                              ledger):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, runtime_retries=2)
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=2)
        stack.wait_ready([MODEL["name"]], ["w1"])
        running = mm.submit(MODEL["name"], "interrupted", options=LONG)
        wait_for(lambda: running.status() == "running", 30, what="the job to start")

        runtime.proc.signal(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(JobFailed, match="runtime error"):
            running.get(timeout=60)
        assert time.monotonic() - started < 30  # two retries with backoff, not a hang

        # Submitted once the node has seen its runtime gone: a worker may take it and put it back while
        # the runtime is away (so its status moves between queued and running); it never fails for
        # the outage, and runs when the runtime is back.
        wait_for(lambda: stack.node_state() and not stack.node_state()["runtime_up"], 15, what="runtime down seen")
        waiting = mm.submit(MODEL["name"], "after the outage", options=SHORT)
        assert waiting.status() in ("queued", "running")

        runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB, port=runtime.port)
        assert waiting.get(timeout=60)["response"]
        ledger("10. runtime killed mid-job, restarted later", "running job fails after 2 retries with the "
               "runtime's error; the queued one completes once it is back", submitted=2, completed=1, failed=1,
               recover_s=time.monotonic() - started)
    finally:
        stack.stop()
        runtime.stop()


def test_a_slow_runtime_times_out_with_a_clear_failure_instead_of_hanging(tmp_path, redis_url, ledger):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB, runtime_timeout_s=1, runtime_retries=1) as stack:
        slow = mm.submit(MODEL["name"], "too slow", options=LONG)

        with pytest.raises(JobFailed, match=r"runtime error: the call timed out after 1s") as failed:
            slow.get(timeout=60)
        # Not retried from scratch: the runtime may still be running the first attempt.
        assert "retrying" not in stack.procs["w1"].output() and failed.value.status == 504
        assert mm.generate(MODEL["name"], "quick one", options=SHORT, timeout=60)["response"]
        ledger("10b. runtime slower than the 1 s timeout", "the job fails at once naming the timeout (not "
               "retried); nothing hangs", submitted=2, completed=1, failed=1)


def test_a_load_that_runs_out_of_memory_teaches_the_real_size_evicts_and_completes(tmp_path, redis_url, ledger):
    # Tags say 1 GB, but estimates of half that make mm think two models fit in 1.8 GB.
    models = [MODEL | {"name": n, "eval_rate": 2000} for n in ("oom-a:1b", "oom-b:1b")]
    with sim_node(tmp_path, redis_url, models, 1_800_000_000, size_multiplier=0.5,
                  safety_margin=0, min_residency_s=0) as stack:
        assert mm.generate("oom-a:1b", "first", options=SHORT, timeout=60)["response"]

        result = mm.generate("oom-b:1b", "second", options=SHORT, timeout=60)

        assert result["response"]
        assert stack.resident() == ["oom-b:1b"]
        assert "out of memory" in stack.procs["broker"].output()
        assert registry.get(stack.r, "oom-b:1b").size == GB  # learned from the runtime after the retry
        ledger("11. load out of memory (size underestimated)", "size learned, other model evicted, load "
               "retried, job completes", submitted=2, completed=2, failed=0)


def test_a_model_unloaded_behind_mm_while_a_job_runs_does_not_fail_the_job(tmp_path, redis_url, ledger):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=2)
        stack.wait_ready([MODEL["name"]], ["w1"])
        job = mm.submit(MODEL["name"], "keep going", options={"num_predict": 80})
        wait_for(lambda: job.status() == "running", 30, what="the job to start")

        ollama.Client(host=runtime.url).generate(model=MODEL["name"], prompt="", keep_alive=0)

        assert job.get(timeout=60)["timings"]["eval_tokens"] == 80
        # mm notices the model is gone and loads it again for the next job.
        assert mm.generate(MODEL["name"], "again", options=SHORT, timeout=60)["response"]
        ledger("12. model unloaded behind mm while its job runs", "the job is not failed; mm reloads for the "
               "next", submitted=2, completed=2, failed=0)
    finally:
        stack.stop()
        runtime.stop()
