"""Redis restarts: with AOF queued jobs survive and workers resume; without persistence lost jobs are reported."""

from __future__ import annotations

import time

import pytest

import mm
from mm import cancel, keys
from mm.errors import JobFailed, JobLost
from tests.faults.conftest import ran_twice
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

MODEL = sim_model("durable:1b", load_bandwidth=10 * GB, eval_rate=2000)
OPTS = {"num_predict": 8}


@pytest.fixture
def stack(tmp_path, redis_url, redis_server):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB)
    s = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    s.start_broker()
    s.wait_ready([MODEL["name"]], [])
    yield s
    s.stop()
    runtime.stop()
    redis_server.restart()  # leave the session's Redis as the next test expects it


def queued(stack) -> int:
    return sum(stack.r.llen(keys.priority_list(MODEL["name"], p)) for p in keys.PRIORITY_STEPS)


def test_with_aof_queued_jobs_survive_a_redis_restart_and_workers_resume(stack, redis_server, ledger):
    jobs = [mm.submit(MODEL["name"], f"keep me {i}", options=OPTS) for i in range(10)]
    assert queued(stack) == 10  # no model-worker yet: they wait

    redis_server.restart(appendonly=True)
    restarted_at = time.monotonic()
    stack.start_worker("w1")

    results = [job.get(timeout=90) for job in jobs]
    ledger("4. Redis killed and restarted with AOF", "queued jobs survive, workers resume", submitted=10,
           completed=10, failed=0, duplicated=ran_twice(stack.r, 10), recover_s=time.monotonic() - restarted_at)
    assert [r["id"] for r in results] == [j.id for j in jobs]
    wait_for(stack.node_state, 30, what="the broker to publish again after the restart")


def test_without_persistence_lost_jobs_are_reported_not_left_pending(stack, redis_server, ledger):
    jobs = [mm.submit(MODEL["name"], f"lose me {i}", options=OPTS) for i in range(5)]

    redis_server.restart(appendonly=False)
    restarted_at = time.monotonic()
    stack.start_worker("w1")

    for job in jobs:
        with pytest.raises(JobLost, match="was lost"):
            job.get(timeout=30)
    # mm itself recovers: the node re-registers its models and new jobs run.
    wait_for(lambda: stack.r.hexists(keys.MODELS, MODEL["name"]), 30, what="the registry to be rebuilt")
    assert mm.generate(MODEL["name"], "after the loss", options=OPTS, timeout=60)["response"]
    ledger("5. Redis restarted without persistence", "each lost job raises JobLost (none left pending); "
           "new jobs run", submitted=6, completed=1, failed=5, recover_s=time.monotonic() - restarted_at)


def test_a_job_whose_message_the_broker_lost_in_a_restart_ends_failed_saying_so(stack, redis_server, ledger):
    # Given two queued jobs, one whose message kombu's BRPOP took as Redis died (the pop saved, its
    # answer lost with the connection): it is in no queue and no worker holds it
    lost, kept = (mm.submit(MODEL["name"], f"{name} in the restart", options=OPTS) for name in ("lost", "kept"))
    assert cancel.take_off(stack.r, cancel.model_lists([MODEL["name"]]), lambda job_id: job_id == lost.id) == [lost.id]

    # When Redis restarts (AOF) and the leader looks once it has been up for MM_ORPHAN_GRACE_S
    redis_server.restart(appendonly=True)
    restarted_at = time.monotonic()

    # Then the lost job ends failed with the reason instead of waiting forever, and the other runs
    with pytest.raises(JobFailed, match="lost by the broker: a worker took the job.s message off its queue"):
        lost.get(timeout=60)
    recover_s = time.monotonic() - restarted_at
    stack.start_worker("w1")
    assert kept.get(timeout=90)["id"] == kept.id
    assert lost.status() == "failed" and "jobs lost by the broker" in stack.procs["broker"].output()
    ledger("4c. a job's message lost by kombu's BRPOP as Redis died (AOF)", "the job ends failed with the reason "
           "once Redis has been up MM_ORPHAN_GRACE_S; the others run", submitted=2, completed=1, failed=1,
           recover_s=recover_s)
