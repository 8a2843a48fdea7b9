"""A rolling restart (SIGTERM, then start again) of every Celery process of a node under a steady
load interrupts no job: each runs once, on its first delivery, and none fails."""

from __future__ import annotations

import signal
import threading
import time

import mm
from mm import keys
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

MODEL = sim_model("rolling:1b", load_bandwidth=10 * GB, eval_rate=40, parallel=4)
OPTS = {"num_predict": 12}  # 0.3 s each: every SIGTERM finds jobs running


def restart(stack, name: str) -> float:
    """SIGTERM one process, wait until it exited (its jobs done), start it again; seconds it took."""
    began = time.monotonic()
    proc = stack.procs[name]
    proc.signal(signal.SIGTERM)
    wait_for(lambda: not proc.alive(), 60, what=f"{name} to finish its jobs and exit")
    proc.stop()
    if name.startswith("broker") or name == "standby":
        stack.start_broker(name)
    else:
        stack.start_worker(name, slots=2)
    return time.monotonic() - began


def test_a_rolling_restart_of_every_process_interrupts_no_job(tmp_path, redis_url, ledger):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB, workers=("w1", "w2")) as stack:
        stack.start_broker("standby")
        jobs, stop = [], threading.Event()

        def load() -> None:
            while not stop.is_set():
                jobs.append(mm.submit(MODEL["name"], f"steady {len(jobs)}", options=OPTS))
                time.sleep(0.1)

        submitter = threading.Thread(target=load, daemon=True)
        submitter.start()
        began = time.monotonic()
        try:
            wait_for(lambda: len(jobs) >= 10, 30, what="the load to start")
            for name in ("w1", "w2", "broker", "standby", "w1"):
                restart(stack, name)
                wait_for(lambda: stack.r.get(keys.BROKER_LEASE), 30, what="a leader")
        finally:
            stop.set()
            submitter.join(10)
        results = [job.get(timeout=120) for job in jobs]
        deliveries = [int(stack.r.hget(keys.job(job.id), keys.DELIVERIES_FIELD) or 0) for job in jobs]
        served = stack.runtime.served()

    assert [r["id"] for r in results] == [j.id for j in jobs]
    assert deliveries == [1] * len(jobs), [j.id for j, d in zip(jobs, deliveries, strict=True) if d != 1]
    assert len(served) == len(jobs) and max(served.values()) == 1
    ledger("16. rolling restart (SIGTERM, start again) of both model-workers and both gpu-brokers under load",
           "no job interrupted: each ran once, on its first delivery", submitted=len(jobs), completed=len(results),
           failed=0, duplicated=sum(n - 1 for n in served.values()), recover_s=time.monotonic() - began)
