"""The result cache on the sample replay trace: GPU seconds with the cache off and on, side by side.

    python -m bench.cache [--smoke] [--jobs 150] [--repeat 0.3] [--scale 0.05]

The first ``--jobs`` jobs of bench/traces/sample.jsonl (every time multiplied by ``--scale``), of
which a ``--repeat`` share (30%) is made a repeat of an earlier job: same model, prompt and
options, at its own arrival time. Every job has a fixed seed, so every one is cacheable. One
stack (a private redis-server, ``mm runtime`` with the sim engine, a gpu-broker and model-workers
as real processes) runs the trace twice: with ``cache=False``, then with ``cache=True`` (the cache
starts empty: the first pass stores nothing). GPU seconds are the runtime's busy seconds, the sum
of the results' ``timings.runtime_s`` (0 for an answer from the cache). A repeat that arrives while
its original still runs is a miss (both run), so the hit share is below the repeat share; the
cache should cut GPU seconds by about the share of runtime it hits.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass

from bench import traces as tr
from bench.common import Services, table
from bench.live import _at_times, prompt_for
from bench.simcore import Trace, TraceJob


@dataclass(frozen=True)
class Request:
    """One job of the bench: its trace job (arrival time, model, priority) and what it asks."""

    job: TraceJob
    prompt: str
    options: dict
    repeat_of: int | None  # the index of the job it repeats


def with_repeats(trace: Trace, share: float, seed: int = 5) -> list[Request]:
    """The trace's jobs, ``share`` of them (not the first) turned into repeats of an earlier job."""
    rng = random.Random(seed)
    n = len(trace.jobs)
    repeats = set(rng.sample(range(1, n), round(share * n))) if n > 1 else set()
    out: list[Request] = []
    for i, job in enumerate(trace.jobs):
        if i in repeats:
            original = rng.choice([k for k in range(i) if k not in repeats] or [0])
            source = out[original]
            out.append(Request(TraceJob(job.t, source.job.model, job.priority, source.job.prompt_tokens,
                                        source.job.eval_tokens), source.prompt, source.options, original))
        else:
            out.append(Request(job, f"job {i}: {prompt_for(job)}", {"num_predict": job.eval_tokens, "seed": 1},
                               None))
    return out


@dataclass
class Pass:
    """What one pass over the requests measured."""

    name: str
    jobs: int = 0
    failed: int = 0
    hits: int = 0
    gpu_s: float = 0.0  # the runtime's busy seconds: sum of timings.runtime_s
    saved_s: float = 0.0  # runtime seconds the hits took when they ran
    makespan_s: float = 0.0


def run_pass(name: str, requests: list[Request], cache: bool) -> Pass:
    import mm

    handles = []
    start = _at_times_of(requests, lambda q: handles.append(
        mm.submit(q.job.model, q.prompt, priority=q.job.priority, options=q.options, cache=cache)))
    out = Pass(name, jobs=len(requests))
    end = start
    for handle in handles:
        try:
            result = handle.get(timeout=600)
        except (mm.JobFailed, TimeoutError):
            out.failed += 1
            continue
        timings = result["timings"]
        out.gpu_s += float(timings.get("runtime_s", 0.0))
        if timings.get("cached"):
            out.hits += 1
            out.saved_s += float(timings.get("saved_runtime_s", 0.0))
        end = max(end, float(handle.record().get("completed_at") or start))
    out.makespan_s = end - start
    return out


def _at_times_of(requests: list[Request], fire) -> float:
    by_job = {id(q.job): q for q in requests}
    trace = Trace("cache", {}, [], 0)
    trace.jobs = [q.job for q in requests]  # already in arrival order
    return _at_times(trace, lambda job: fire(by_job[id(job)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few jobs, to check that it runs")
    parser.add_argument("--jobs", type=int, default=150, help="the first N jobs of the sample trace")
    parser.add_argument("--repeat", type=float, default=0.3, help="share of the jobs that repeat an earlier one")
    parser.add_argument("--scale", type=float, default=0.05, help="multiply every time in the trace by this")
    parser.add_argument("--workers", type=int, default=2, help="model-workers (4 slots each)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs = 20

    trace = tr.truncated(tr.replay(), args.jobs).scaled(args.scale)
    requests = with_repeats(trace, args.repeat)
    repeats = sum(q.repeat_of is not None for q in requests)
    print(f"trace replay: first {len(requests)} jobs, every time x{args.scale} ({trace.jobs[-1].t:.1f}s of "
          f"arrivals), {repeats} ({repeats / len(requests):.0%}) repeat an earlier job; all with seed 1")
    with Services() as services:
        redis_url = services.redis()
        os.environ["MM_REDIS_URL"] = redis_url  # before mm's Celery app is imported
        runtime = services.runtime(trace.runtime_models(), memory=trace.memory)
        stack = services.stack(redis_url, runtime.url, trace.memory, tick_s=0.1, heartbeat_s=0.5,
                               min_residency_s=1.0, unload_settle_s=2.0)
        stack.start_broker()
        workers = [f"w{i}" for i in range(args.workers)]
        for name in workers:
            stack.start_worker(name, slots=4)
        stack.wait_ready(list(trace.models), workers, timeout=120)
        off = run_pass("cache off", requests, cache=False)
        time.sleep(1.0)  # the last closing writes
        on = run_pass("cache on", requests, cache=True)
    print(table(["pass", "jobs", "failed", "hits", "hit_share", "gpu_s", "saved_s", "makespan_s"],
                [[p.name, p.jobs, p.failed, p.hits, p.hits / p.jobs, p.gpu_s, p.saved_s, p.makespan_s]
                 for p in (off, on)], digits=3))
    ratio = on.gpu_s / off.gpu_s if off.gpu_s else 0.0
    hit_share = on.hits / on.jobs
    runtime_share = on.saved_s / off.gpu_s if off.gpu_s else 0.0  # the hits' share of the runtime's work
    print(f"HEADLINE cache: {on.hits}/{on.jobs} jobs ({hit_share:.1%}) answered from the cache ({repeats} "
          f"repeats); GPU seconds {off.gpu_s:.2f} off -> {on.gpu_s:.2f} on, ratio on/off {ratio:.3f}: cut "
          f"{1 - ratio:.1%}, for hits worth {runtime_share:.1%} of the runtime's seconds")


if __name__ == "__main__":
    main()
