"""The runtime down or slow: bounded retries with backoff, then a clear failure; queued jobs complete once it is back."""

from __future__ import annotations

import signal
import time

import pytest

import mm
from mm.errors import JobFailed
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack

pytestmark = pytest.mark.faults

GB = 1_000_000_000
MODEL = {"name": "fragile:1b", "engine": "sim", "size": GB, "load_bandwidth": 10 * GB, "eval_rate": 40}
LONG = {"num_predict": 200}  # five seconds of generation
SHORT = {"num_predict": 4}


def test_a_runtime_that_dies_fails_the_running_job_clearly_and_queued_jobs_run_once_it_is_back(tmp_path, redis_url):
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

        waiting = mm.submit(MODEL["name"], "after the outage", options=SHORT)
        wait_for(lambda: stack.node_state() and not stack.node_state()["runtime_up"], 15, what="runtime down seen")
        assert waiting.status() == "queued"

        runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB, port=runtime.port)
        assert waiting.get(timeout=60)["response"]
    finally:
        stack.stop()
        runtime.stop()


def test_a_slow_runtime_times_out_with_a_clear_failure_instead_of_hanging(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, runtime_timeout_s=1, runtime_retries=1)
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=2)
        stack.wait_ready([MODEL["name"]], ["w1"])

        slow = mm.submit(MODEL["name"], "too slow", options=LONG)

        with pytest.raises(JobFailed, match="runtime error: .*(timed out|timeout)"):
            slow.get(timeout=60)
        assert mm.generate(MODEL["name"], "quick one", options=SHORT, timeout=60)["response"]
    finally:
        stack.stop()
        runtime.stop()
