"""A 10,000-request batch through OpenAI's Batch API on the real stack, with a worker and the leader killed.

    python -m bench.batch [--lines 10000] [--no-faults] [--smoke]

A private redis-server (AOF), ``mm runtime`` (sim engine, two models that fit together), a
gpu-broker, 4 model-workers x 4 slots and ``mm gateway``, all real processes. The JSONL file of
chat requests alternating between the models is uploaded (``POST /v1/files``) and a batch created
on it (``POST /v1/batches``): **accepted** is the time both took. With faults, a model-worker is
SIGKILLed (and restarted) when 30% of the requests have ended and the gpu-broker when 60% have.

Printed: accept time (target under 10 s), time until every request was enqueued, the makespan
(created -> completed) against the lower bound of :func:`bench.sim_baselines.lower_bound` for the
same jobs, and exactly-once: every custom_id answered once in the output file, and the job
samples (one per finished run) equal to the requests (a run twice would add one).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import time

import httpx

from bench.common import Services, child_env, ratio, table
from bench.sim_baselines import lower_bound
from bench.simcore import Trace, TraceJob
from mm.runtime.catalog import spec_from_dict

GB = 1_000_000_000
MODELS = [{"name": f"bulk-{c}:1b", "engine": "sim", "size": GB, "load_bandwidth": 2 * GB, "prompt_rate": 20_000,
           "eval_rate": 200, "parallel": 8} for c in "ab"]
EVAL_TOKENS = 20
PROMPT_WORDS = 6
WORKERS, SLOTS = 4, 4
ACCEPT_TARGET_S = 10.0


def request_file(lines: int) -> bytes:
    """``lines`` chat requests, alternating between the two models."""
    rows = []
    for i in range(lines):
        body = {"model": MODELS[i % 2]["name"], "max_tokens": EVAL_TOKENS, "seed": i,
                "messages": [{"role": "user", "content": " ".join(["word"] * PROMPT_WORDS) + f" {i}"}]}
        rows.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(rows) + "\n").encode()


def bound(lines: int) -> float:
    """The lower bound on the makespan of ``lines`` such jobs all present at once, on this stack."""
    specs = {m["name"]: spec_from_dict(m, where="bench.batch") for m in MODELS}
    jobs = [TraceJob(0.0, MODELS[i % 2]["name"], "low", PROMPT_WORDS + 12, EVAL_TOKENS) for i in range(lines)]
    return lower_bound(Trace("batch", specs, jobs, memory=4 * GB), WORKERS * SLOTS, 8)


def start(services: Services) -> tuple[object, str, object]:
    """Redis, runtime, node and gateway; the stack (its runtime as ``stack.runtime``) and the gateway URL."""
    from tests.gateway_proc import start_gateway

    redis_url = services.redis()
    runtime = services.runtime(MODELS, memory=4 * GB)
    stack = services.stack(redis_url, runtime.url, 4 * GB, tick_s=0.1, heartbeat_s=0.5, orphan_grace_s=5)
    stack.start_broker()
    for i in range(WORKERS):
        stack.start_worker(f"w{i}", slots=SLOTS)
    stack.wait_ready([m["name"] for m in MODELS], [f"w{i}" for i in range(WORKERS)], timeout=120)
    proc, url = start_gateway(services.dir, child_env(**stack.env), "gateway", files_dir=services.dir / "files",
                              batch_tick_s=0.5)
    services.add(proc)
    stack.runtime = runtime
    return stack, url, stack.r


def submit(url: str, data: bytes) -> tuple[str, float]:
    """Upload the file and create the batch; its id and the seconds both took."""
    began = time.monotonic()
    file_id = httpx.post(f"{url}/v1/files", files={"file": ("bulk.jsonl", data)}, data={"purpose": "batch"},
                         timeout=120).raise_for_status().json()["id"]
    batch = httpx.post(f"{url}/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"}, timeout=60).raise_for_status().json()
    return batch["id"], time.monotonic() - began


def follow(url: str, r, batch_id: str, lines: int, stack, faults: bool) -> tuple[dict, float, list[str], list[float]]:
    """Poll until the batch is final, injecting the faults; (final batch, enqueue seconds, faults done,
    when each model-worker was killed)."""
    began, enqueued_s, done_faults, worker_kills = time.monotonic(), float("nan"), [], []
    plan = [(0.3, "model-worker", "w0"), (0.6, "gpu-broker", "broker")] if faults else []
    while True:
        batch = httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        counts = batch["request_counts"]
        ended = counts["completed"] + counts["failed"]
        if math.isnan(enqueued_s) and int(r.hget(f"mm:batch:{batch_id}", "enqueued") or 0) >= lines:
            enqueued_s = time.monotonic() - began
        while plan and ended >= plan[0][0] * lines:
            _, what, name = plan.pop(0)
            if name != "broker":
                worker_kills.append(time.time())
            stack.procs[name].signal(signal.SIGKILL)
            stack.procs[name].stop()
            stack.start_broker() if name == "broker" else stack.start_worker(name, slots=SLOTS)
            done_faults.append(f"{what} SIGKILLed at {ended}/{lines}")
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch, enqueued_s, done_faults, worker_kills
        time.sleep(0.5)


def exactly_once(url: str, runtime, batch: dict, worker_kills: list[float]) -> tuple[int, int, int, int]:
    """(custom_ids answered, answered more than once, runtime runs beyond one per request, of which
    interrupted by a killed worker).

    Runs are counted in the runtime's own log (each request's body digest, answered in full). A run
    the runtime finished just as its worker was SIGKILLed never reached mm, which ran the job again:
    wasted work, not a job run twice (see :func:`tests.runtime_server.runs_twice`)."""
    from tests.runtime_server import runs_twice

    out = httpx.get(f"{url}/v1/files/{batch['output_file_id']}/content", timeout=120).text.splitlines()
    ids = [json.loads(x)["custom_id"] for x in out if x.strip()]
    extra, interrupted = runs_twice(runtime.served_spans(), worker_kills)
    return len(set(ids)), len(ids) - len(set(ids)), extra - interrupted, interrupted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="500 lines")
    args = parser.parse_args(argv)
    lines = 500 if args.smoke else args.lines
    with Services() as services:
        stack, url, r = start(services)
        batch_id, accept_s = submit(url, request_file(lines))
        batch, enqueued_s, faults, worker_kills = follow(url, r, batch_id, lines, stack, not args.no_faults)
        answered, twice, extra_runs, interrupted = exactly_once(url, stack.runtime, batch, worker_kills)
        record = r.hgetall(f"mm:batch:{batch_id}")
    makespan = float(record[b"completed_at"]) - float(record[b"created_at"]) if record.get(b"completed_at") \
        else float("nan")
    lb = bound(lines)
    print(table(["lines", "status", "accepted s", "enqueued s", "makespan s", "lower bound s", "makespan/LB",
                 "answered", "answered twice", "runs twice", "reruns after a kill", "failed"],
                [[lines, batch["status"], accept_s, enqueued_s, makespan, lb, ratio(makespan, lb), answered, twice,
                  extra_runs, interrupted, batch["request_counts"]["failed"]]]))
    print("faults: " + ("; ".join(faults) if faults else "none"))
    ok = batch["status"] == "completed" and answered == lines and twice == 0 and extra_runs == 0
    print(f"HEADLINE batch: {lines} requests accepted in {accept_s:.2f} s (target < {ACCEPT_TARGET_S:.0f} s, "
          f"{'MET' if accept_s < ACCEPT_TARGET_S else 'MISS'}); makespan {makespan:.1f} s = "
          f"{ratio(makespan, lb):.2f}x the lower bound; every request answered once: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
