"""A runtime restarted under a running job: the job is put back until mm has loaded its model again,
instead of its retry making the fresh runtime load the model behind the scheduler's back (found by the
chaos soak, where such a load ran out of memory and failed the job)."""

from __future__ import annotations

import re
import signal

import mm
from mm import keys
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

MODEL = sim_model("restarted:1b", load_bandwidth=4 * GB, eval_rate=40)
CALL = re.compile(r"POST /api/generate 200 \S+ model=\S+ request=\w+ load=([\d.]+)s")


def test_a_job_whose_runtime_restarted_waits_for_mm_to_load_its_model_again(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, runtime_retries=4)
    try:
        stack.start_broker()
        stack.start_worker("w1", slots=1)
        stack.wait_ready([MODEL["name"]], ["w1"])
        job = mm.submit(MODEL["name"], "interrupted by a restart", options={"num_predict": 120})
        wait_for(lambda: job.status() == "running", 30, what="the job to start")
        before = len(runtime.output())

        runtime.proc.signal(signal.SIGKILL)
        runtime.stop()
        runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=4 * GB, port=runtime.port)

        assert job.get(timeout=90)["timings"]["eval_tokens"] == 120
        after = runtime.output()[before:]
        # The fresh runtime loaded the model for mm's load command, never for the job's own call.
        assert "done_reason=load" in after, after
        # One call for the job, and one load, mm's: its load= is time to a runner, 0.001 s on a busy machine.
        assert len(CALL.findall(after)) == 1 and after.count("mm.runtime: load model=") == 1, after
        # The record's closing write follows the stored result.
        wait_for(lambda: stack.r.hget(keys.job(job.id), "status") == b"complete", 10, what="the record")
    finally:
        stack.stop()
        runtime.stop()
