"""A message of a job that has ended, met again, never runs the job again (found by the chaos soak: the
leader requeued a job its worker had taken while Redis was down, as held by no live worker, and the
worker then ran it; the requeued copy ran it a second time)."""

from __future__ import annotations

import json

import pytest
from celery import Celery

import mm
from mm import keys
from mm.app import INFER_TASK
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

MODEL = sim_model("once:1b", load_bandwidth=10 * GB, eval_rate=2000)


def test_a_message_of_a_completed_job_met_again_is_acked_without_running_it(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB, workers=()) as stack:
        job = mm.submit(MODEL["name"], "run me once", options={"num_predict": 8})
        queue = keys.priority_list(MODEL["name"], keys.PRIORITIES["normal"])
        message = stack.r.lindex(queue, 0)  # the copy a requeue would put back
        stack.start_worker("w1", slots=1)
        first = job.get(timeout=60)
        wait_for(lambda: stack.r.hget(keys.job(job.id), "status") == b"complete", 10, what="the record")

        stack.r.lpush(queue, message)

        wait_for(lambda: "ended already" in stack.procs["w1"].output(), 30, what="the worker to meet it again")
        wait_for(lambda: not stack.r.llen(queue) and not stack.r.hlen("unacked"), 10, what="the message acked")
        assert mm.Job(job.id).get(timeout=10) == first
        assert stack.r.hget(keys.job(job.id), "status") == b"complete"
        assert list(stack.runtime.served().values()) == [1]


SLOW = sim_model("slow-once:1b", load_bandwidth=10 * GB, eval_rate=100)
REQUEST = {"model": SLOW["name"], "prompt": "sent twice", "options": {"num_predict": 400}}


def bound(stack, worker: str) -> bool:
    raw = stack.r.get(keys.worker_state(stack.hostname(worker)))
    return bool(raw) and json.loads(raw)["bound"] == SLOW["name"]


@pytest.mark.parametrize("workers,slots", [(("w1",), 2), (("w1", "w2"), 1)], ids=["one-worker", "two-workers"])
def test_a_job_delivered_twice_at_once_runs_once_and_both_deliveries_end(tmp_path, redis_url, workers, slots):
    with sim_node(tmp_path, redis_url, [SLOW], 4 * GB, workers=workers, slots=slots) as stack:
        mm.generate(SLOW["name"], "warm up", options={"num_predict": 1}, timeout=60)
        wait_for(lambda: bound(stack, workers[0]), 30, what="a worker bound to the model")
        # Given a client that published the same task twice (a publish retried after a lost reply), run
        # by two slots of one worker, or by one worker and then a second that the queued copy binds
        stock = Celery("twice", broker=redis_url, backend=redis_url)
        try:
            copies = [stock.send_task(INFER_TASK, kwargs={"request": REQUEST}, task_id="sent-twice",
                                      queue=keys.model_queue(SLOW["name"])) for _ in range(2)]
            # Then the job runs once, and the second delivery, met while the first runs, waits and is acked
            out = copies[0].get(timeout=60)
        finally:
            stock.close()
        logs = lambda: "".join(stack.procs[w].output() for w in workers)  # noqa: E731
        wait_for(lambda: "this second delivery goes back to the queue" in logs(), 30, what="the second delivery met")
        wait_for(lambda: "ended already" in logs(), 30, what="the second delivery acked")
        wait_for(lambda: not stack.r.hlen("unacked"), 10, what="no message held")
        wait_for(lambda: stack.r.hget(keys.job("sent-twice"), "status") == b"complete", 10, what="the record")
        assert out["response"] and list(stack.runtime.served().values()).count(1) == 2  # the warm-up and the job
