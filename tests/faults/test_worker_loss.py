"""Killing workers under acks_late: no job is lost, none runs twice at once, poison jobs end dead-lettered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from celery import Celery

import mm
from mm import cancel, keys
from mm.app import INFER_TASK
from mm.errors import JobFailed
from tests.faults.conftest import ran_twice
from tests.faults.test_take_is_atomic import TAKE_AND_DIE
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

SLOW = sim_model("slow:1b", load_bandwidth=10 * GB, eval_rate=40, parallel=4)
LONG_JOB = {"num_predict": 80, "seed": 1}  # two seconds of generation


@pytest.fixture
def make_stack(tmp_path, redis_url):
    """make_stack(**settings): a runtime serving SLOW and a node with a gpu-broker; stopped after the test."""
    started = []

    def make(**settings) -> Stack:
        runtime = start_runtime(tmp_path, engine="sim", models=[SLOW], memory=4 * GB)
        s = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, **settings)
        started.append((s, runtime))
        s.start_broker()
        return s

    yield make
    for s, runtime in started:
        s.stop()
        runtime.stop()


@pytest.fixture
def stack(make_stack):
    return make_stack(max_deliveries=3)


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
    assert int(stack.r.hget(keys.job(job.id), keys.DELIVERIES_FIELD)) == 2
    events = [json.loads(e[b"event"]) for _id, e in stack.r.xrange(keys.EVENTS)]
    assert any(e["kind"] == "worker_lost" and e["requeued"] == 1 for e in events)


def test_a_job_that_kills_its_worker_every_time_ends_dead_lettered_with_a_reason(stack, ledger):
    stack.wait_ready([SLOW["name"]], [])
    job = mm.submit(SLOW["name"], "poison", options=LONG_JOB)
    killed = 0
    for i in range(3):
        name = f"w{i}"
        stack.start_worker(name, slots=1)
        wait_for(lambda name=name: running_on(job) == stack.hostname(name), 60, what=f"delivery {i + 1} on {name}")
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


def _strand(r, model: str, delivered_ago_s: float, payload: bytes | None = None) -> str:
    """Put a job's message in kombu's unacked hash as a delivery ``delivered_ago_s`` ago that no worker
    holds: what is left when a worker's broker connection dropped and neither its ack nor kombu's
    restore could be written. Takes it from the queue unless ``payload`` is given; returns the job id."""
    raw = payload or r.rpop(keys.priority_list(model, keys.PRIORITIES["normal"]))
    message = json.loads(raw)
    info = message["properties"]["delivery_info"]
    tag = message["properties"]["delivery_tag"]
    r.hset("unacked", tag, json.dumps([message, info["exchange"], info["routing_key"]]))
    r.zadd("unacked_index", {tag: time.time() - delivered_ago_s})
    return message["headers"]["id"]


def test_a_job_no_live_worker_holds_is_requeued_after_the_grace_not_the_visibility_timeout(make_stack, ledger):
    stack = make_stack(orphan_grace_s=2)
    stack.wait_ready([SLOW["name"]], [])
    job = mm.submit(SLOW["name"], "stranded", options={"num_predict": 4})
    assert _strand(stack.r, SLOW["name"], delivered_ago_s=0) == job.id
    stranded_at = time.monotonic()
    stack.start_worker("w1", slots=1)
    result = job.get(timeout=60)
    recover_s = time.monotonic() - stranded_at
    ledger("14. a held job stranded by a broker connection loss", "requeued after MM_ORPHAN_GRACE_S, completes",
           submitted=1, completed=1, failed=0, duplicated=ran_twice(stack.r, 1), recover_s=recover_s)
    assert result["response"] and 2 <= recover_s < 30
    wait_for(lambda: not any(job.id.encode() in raw for raw in stack.r.hvals("unacked")), 10,
             what="the worker's ack")  # it follows the stored result
    events = [json.loads(e[b"event"]) for _id, e in stack.r.xrange(keys.EVENTS)]
    assert any(e["kind"] == "jobs_stranded" and e["jobs"] == 1 for e in events)


def test_a_finished_job_whose_ack_was_lost_is_acked_by_the_leader_and_never_runs_again(make_stack):
    stack = make_stack(orphan_grace_s=1)
    stack.start_worker("w1", slots=1)
    stack.wait_ready([SLOW["name"]], ["w1"])
    job = mm.submit(SLOW["name"], "done once", options={"num_predict": 4})
    job.get(timeout=60)
    sent = {"properties": {"delivery_tag": "lost-ack", "delivery_info": {
        "exchange": keys.model_queue(SLOW["name"]), "routing_key": keys.model_queue(SLOW["name"])}},
        "headers": {"id": job.id}, "body": ""}
    _strand(stack.r, SLOW["name"], delivered_ago_s=60, payload=json.dumps(sent).encode())
    wait_for(lambda: not stack.r.hexists("unacked", "lost-ack"), 30, what="the leader to ack the finished job")
    assert int(stack.r.hget(keys.job(job.id), keys.DELIVERIES_FIELD)) == 1
    assert not any(stack.r.llen(keys.priority_list(SLOW["name"], p)) for p in keys.PRIORITY_STEPS)


def test_a_job_whose_message_a_dying_worker_took_ends_failed_saying_so(stack, ledger):
    # Given two queued jobs, one whose message a model-worker's BRPOP took just as the worker was
    # SIGKILLed (before kombu recorded it as held): it is in no queue and no worker holds it
    stack.wait_ready([SLOW["name"]], [])
    lost, kept = (mm.submit(SLOW["name"], f"{name} with the worker", options=LONG_JOB) for name in ("lost", "kept"))
    assert cancel.take_off(stack.r, cancel.model_lists([SLOW["name"]]), lost.id.__eq__) == [lost.id]

    # When the model-worker running the other one is killed and the leader finds it gone
    stack.start_worker("w1", slots=1)
    wait_for(lambda: kept.status() == "running", 60, what="the kept job to start")
    stack.procs["w1"].signal(signal.SIGKILL)
    stack.procs["w1"].stop()
    killed_at = time.monotonic()

    # Then the lost job ends failed with the reason instead of waiting forever, and the other runs
    with pytest.raises(JobFailed, match="lost by the broker: a worker took the job's message off its queue"):
        lost.get(timeout=90)
    recover_s = time.monotonic() - killed_at
    assert "jobs lost by the broker ended failed" in stack.procs["broker"].output()
    stack.start_worker("w2", slots=1)
    assert kept.get(timeout=90)["id"] == kept.id
    ledger("1d. a job's message taken by a worker's BRPOP as the worker was SIGKILLed", "the job ends failed "
           "with the reason once the leader finds the worker gone; the others run", submitted=2, completed=1,
           failed=1, recover_s=recover_s)


def test_a_stock_client_job_whose_taker_was_killed_as_it_took_the_message_runs(make_stack, redis_url, ledger):
    # Given a stock Celery client's job (mm keeps no record of it until a worker starts it), taken off
    # its queue by a consumer SIGKILLed before it read the message
    stack = make_stack(orphan_grace_s=2)
    stock = Celery("plain", broker=redis_url, backend=redis_url)
    try:
        job = stock.send_task(INFER_TASK, kwargs={"request": {"model": SLOW["name"], "prompt": "taken"}},
                              queue=keys.model_queue(SLOW["name"]))
        died = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, redis_url, keys.model_queue(SLOW["name"])],
                              capture_output=True, text=True, timeout=60)
        assert died.returncode == -signal.SIGKILL, died.stderr
        taken_at = time.monotonic()

        # When a model-worker is up
        stack.start_worker("w1", slots=1)

        # Then the job runs: its message was held, not lost, and the leader put it back
        assert job.get(timeout=90)["response"]
        ledger("1e. a stock client's job taken off its queue by a worker SIGKILLed before it read it",
               "the job runs once the leader puts the held message back", submitted=1, completed=1, failed=0,
               recover_s=time.monotonic() - taken_at)
        assert stack.r.hget(keys.job(job.id), keys.DELIVERIES_FIELD) == b"1"
    finally:
        stock.close()
