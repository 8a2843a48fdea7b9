"""A message of a job that has ended, met again, never runs the job again (found by the chaos soak: the
leader requeued a job its worker had taken while Redis was down, as held by no live worker, and the
worker then ran it; the requeued copy ran it a second time)."""

from __future__ import annotations

import mm
from mm import keys
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
