"""Killing workers under acks_late: no job is lost, none runs twice at once, poison jobs end dead-lettered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import mm
from mm import keys
from mm.errors import JobFailed
from tests.faults.conftest import ran_twice
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack

pytestmark = pytest.mark.faults

GB = 1_000_000_000
SLOW = {"name": "slow:1b", "engine": "sim", "size": GB, "load_bandwidth": 10 * GB, "eval_rate": 40, "parallel": 4}
LONG_JOB = {"num_predict": 80, "seed": 1}  # two seconds of generation


@pytest.fixture
def stack(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[SLOW], memory=4 * GB)
    s = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, max_deliveries=3)
    s.start_broker()
    yield s
    s.stop()
    runtime.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60)


def running_on(job) -> str | None:
    record = job.record()
    return record.get("worker") if record.get("status") == "running" else None


def test_a_job_whose_worker_is_killed_mid_run_is_redelivered_and_completes(stack, ledger):
    stack.start_worker("w1", slots=1)
    stack.wait_ready([SLOW["name"]], ["w1"])
    job = mm.submit(SLOW["name"], "survive", options=LONG_JOB)
    wait_for(lambda: running_on(job), 30, what="the job to start")

    stack.procs["w1"].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    stack.start_worker("w2", slots=1)

    result = job.get(timeout=60)
    ledger("1. model-worker SIGKILLed mid-job", "redelivered at once, completes on another worker",
           submitted=1, completed=1, failed=0, duplicated=ran_twice(stack.r, 1), recover_s=time.monotonic() - killed_at)
    assert result["worker"] == stack.hostname("w2")
    assert int(stack.r.get(keys.deliveries(job.id))) == 2
    events = [json.loads(e[b"event"]) for _id, e in stack.r.xrange(keys.EVENTS)]
    assert any(e["kind"] == "worker_lost" and e["requeued"] == 1 for e in events)


def test_a_job_that_kills_its_worker_every_time_ends_dead_lettered_with_a_reason(stack, ledger):
    stack.wait_ready([SLOW["name"]], [])
    job = mm.submit(SLOW["name"], "poison", options=LONG_JOB)
    killed = 0
    for i in range(3):
        name = f"w{i}"
        stack.start_worker(name, slots=1)
        wait_for(lambda: running_on(job) == stack.hostname(name), 60, what=f"delivery {i + 1} on {name}")
        stack.procs[name].signal(signal.SIGKILL)
        killed += 1
    stack.start_worker("survivor", slots=1)

    with pytest.raises(JobFailed, match="dead-lettered after 3 deliveries"):
        job.get(timeout=60)
    assert killed == 3
    ledger("2. a job kills its worker every time", "dead-lettered after 3 deliveries with the reason; "
           "`mm jobs retry` requeues it", submitted=1, completed=0, failed=1, duplicated=ran_twice(stack.r, 0))
    listed = cli("jobs", "failed")
    assert job.id in listed.stdout and "dead-lettered after 3 deliveries" in listed.stdout

    # Once the cause is gone, an operator requeues it and it completes under the same id.
    assert cli("jobs", "retry", job.id).returncode == 0
    assert job.get(timeout=60)["worker"] == stack.hostname("survivor")
    assert "no dead-lettered jobs" in cli("jobs", "failed").stdout


def test_other_jobs_are_unaffected_by_a_killed_worker(stack, ledger):
    stack.start_worker("w1", slots=2)
    stack.start_worker("w2", slots=2)
    stack.wait_ready([SLOW["name"]], ["w1", "w2"])
    jobs = [mm.submit(SLOW["name"], f"job {i}", options={"num_predict": 20, "seed": i}) for i in range(12)]
    wait_for(lambda: any(running_on(j) == stack.hostname("w1") for j in jobs), 30, what="w1 to run a job")

    stack.procs["w1"].signal(signal.SIGKILL)
    killed_at = time.monotonic()

    results = [j.get(timeout=90) for j in jobs]
    assert len({r["id"] for r in results}) == 12
    assert all(j.status() == "complete" for j in jobs)
    ledger("1b. one of two workers SIGKILLed under load", "every job completes", submitted=12, completed=12,
           failed=0, duplicated=ran_twice(stack.r, 12), recover_s=time.monotonic() - killed_at)
