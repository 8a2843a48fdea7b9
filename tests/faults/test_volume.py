"""10,000 jobs across 20 models complete, with Redis and worker memory bounded."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import mm
from tests.faults.conftest import ran_twice
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

pytestmark = pytest.mark.slow

JOBS = 10_000
MODELS = [sim_model(f"vol-{i:02d}:1b", size=GB // 2, load_bandwidth=50 * GB, prompt_rate=1_000_000, eval_rate=1_000_000,
                    parallel=16) for i in range(20)]


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def test_ten_thousand_jobs_across_twenty_models_complete_with_bounded_memory(tmp_path, redis_url, ledger):
    # 6 GB holds 12 of the 20 models: the scheduler keeps swapping while the queues drain.
    runtime = start_runtime(tmp_path, engine="sim", models=MODELS, memory=6 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=6 * GB, safety_margin=0, min_residency_s=0.5,
                  result_expires_s=600)
    try:
        stack.start_broker()
        for i in range(3):
            stack.start_worker(f"w{i}", slots=8)
        stack.wait_ready([m["name"] for m in MODELS], [f"w{i}" for i in range(3)])
        redis_before = stack.r.info("memory")["used_memory"]
        rng = random.Random(11)
        started = time.monotonic()

        jobs = [mm.submit(rng.choice(MODELS)["name"], f"job {i} " + "x" * 80, options={"num_predict": 1},
                          priority=rng.choice(["high", "normal", "low"])) for i in range(JOBS)]
        results = [job.get(timeout=600) for job in jobs]
        elapsed = time.monotonic() - started

        assert len({r["id"] for r in results}) == JOBS
        redis_growth = stack.r.info("memory")["used_memory"] - redis_before
        worker_rss = max(rss_bytes(stack.procs[f"w{i}"].pid) for i in range(3))
        print(f"\n{JOBS} jobs in {elapsed:.0f}s ({JOBS / elapsed:.0f}/s); Redis grew {redis_growth / 1e6:.1f} MB "
              f"({redis_growth / JOBS:.0f} B/job incl. results and metrics); "
              f"largest worker RSS {worker_rss / 1e6:.0f} MB")
        ledger("13. 10,000 jobs over 20 models (12 fit), 3 workers", f"all complete; Redis +{redis_growth / JOBS:.0f} "
               f"B/job, worker RSS {worker_rss / 1e6:.0f} MB, {JOBS / elapsed:.0f} jobs/s", submitted=JOBS,
               completed=JOBS, failed=0, duplicated=ran_twice(stack.r, JOBS))
        assert redis_growth / JOBS < 4096  # results, job records and metric samples, all with TTLs
        assert worker_rss < 400e6
    finally:
        stack.stop()
        runtime.stop()
