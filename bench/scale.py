"""How mm scales: plan() time on a big cluster, and Redis memory per queued job.

    python -m bench.scale [--smoke] [--models 1000] [--nodes 100] [--jobs 1000000] [--redis-jobs 20000]

1. ``mm.scheduling.policy.plan`` on snapshots of ``--models`` models, ``--nodes`` nodes (80 GB, 4 model-workers
   each) and ``--jobs`` queued jobs aggregated per model and priority (Zipf over the models), in
   three shapes: cold (nothing resident), full (every node full, every model demanded: eviction
   search everywhere) and steady (residents serving their own backlogs, a few challengers).
   Target: median <= 10 ms.
2. Redis memory per queued job: ``--redis-jobs`` jobs with a 100-character prompt submitted with
   ``mm.submit`` to a private redis-server with no workers and no leader; INFO ``used_memory``
   delta / jobs, including mm's job record (the leader's wake-up list, which a running leader
   empties, is deleted first). Target: <= 2 KB.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time

from bench.common import GB, Services, table
from mm.scheduling.policy import plan
from mm.scheduling.snapshot import (
    PRIORITY_CLASSES,
    Demand,
    ModelInfo,
    Node,
    Resident,
    Snapshot,
    Worker,
)

PLAN_TARGET_MS = 10.0
MEMORY_TARGET_B = 2048
NODE_GB = 80


def big_snapshot(n_models: int, n_nodes: int, n_jobs: int, shape: str, seed: int = 5) -> Snapshot:
    """A synthetic cluster: ``shape`` is ``cold``, ``full`` or ``steady`` (see the module docstring)."""
    rng = random.Random(seed)
    now = 100_000.0
    models = {f"m{i:04d}:{s}b": ModelInfo(f"m{i:04d}:{s}b", s * GB, 4)
              for i, s in enumerate(rng.choice((1, 2, 4, 5, 8, 9, 14, 20, 33, 40)) for _ in range(n_models))}
    names = sorted(models)
    weights = [1 / (k + 1) for k in range(n_models)]
    total_w = sum(weights)
    demand = {}
    for k, name in enumerate(names):
        jobs = max(1, round(n_jobs * weights[k] / total_w))
        split = [rng.random() for _ in PRIORITY_CLASSES]
        queued = {c: max(1, int(jobs * x / sum(split))) for c, x in zip(PRIORITY_CLASSES, split, strict=True)}
        demand[name] = Demand(name, queued, {c: rng.uniform(0, 300) for c in queued})
    nodes = {}
    order = names[:]
    rng.shuffle(order)
    cursor = 0
    for i in range(n_nodes):
        resident: dict[str, Resident] = {}
        free = NODE_GB * GB
        if shape != "cold":
            while cursor < len(order) and models[order[cursor]].size <= free:
                m = order[cursor]
                resident[m] = Resident(m, models[m].size, now - rng.uniform(30, 3000), now - rng.uniform(0, 30),
                                       rng.randint(0, 4) if shape == "steady" else 0)
                free -= models[m].size
                cursor += 1
            cursor += 1  # the model that did not fit stays a challenger
        workers = tuple(Worker(f"w{k}@n{i}", 4, None, 0) for k in range(4))
        nodes[f"n{i:03d}"] = Node(f"n{i:03d}", NODE_GB * GB, free, resident, workers)
    if shape == "steady":  # only resident models and a few challengers have queued jobs
        resident_models = {m for n in nodes.values() for m in n.resident}
        challengers = [m for m in names if m not in resident_models][:20]
        demand = {m: d for m, d in demand.items() if m in resident_models or m in challengers}
    return Snapshot(now=now, models=models, demand=demand, nodes=nodes, safety_margin=512 * 2**20,
                    min_residency_s=10.0, aging_s=60.0)


def time_plan(snapshot: Snapshot, repeats: int) -> tuple[list[float], int]:
    """plan() wall times in ms, and how many actions it returned."""
    times, actions = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        actions = len(plan(snapshot))
        times.append((time.perf_counter() - t0) * 1000)
    return times, actions


def redis_memory(services: Services, n: int) -> dict[str, float]:
    """Bytes of Redis memory per queued job (see the module docstring)."""
    import redis

    url = services.redis(appendonly=False)
    os.environ["MM_REDIS_URL"] = url  # before mm's Celery app is imported
    import mm
    from mm import keys, registry
    from mm.registry import ModelEntry
    from mm.settings import get as get_settings

    model = "bench-mem:1b"
    registry.save(redis.Redis.from_url(url), ModelEntry(model, GB, int(GB * get_settings().size_multiplier)))
    r = redis.Redis.from_url(url)
    prompt = ("Summarise the following ticket in one line, keeping product names exact. " * 2)[:100]
    assert len(prompt) == 100
    mm.submit(model, prompt)  # the first send declares kombu's bindings: not per-job memory
    r.delete(keys.WAKE)
    queue_before = sum(r.memory_usage(keys.priority_list(model, s), samples=0) or 0 for s in keys.PRIORITY_STEPS)
    before = r.info("memory")["used_memory"]
    ids: list[str] = []
    lock = threading.Lock()

    def submit(count: int) -> None:
        for _ in range(count):
            job = mm.submit(model, prompt)
            with lock:
                ids.append(job.id)

    threads = [threading.Thread(target=submit, args=(n // 4 + (i < n % 4),)) for i in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    r.delete(keys.WAKE)
    after = r.info("memory")["used_memory"]
    queued = sum(r.llen(keys.priority_list(model, s)) for s in keys.PRIORITY_STEPS)
    queue_after = sum(r.memory_usage(keys.priority_list(model, s), samples=0) or 0 for s in keys.PRIORITY_STEPS)
    record = statistics.mean(r.memory_usage(keys.job(i), samples=0) for i in ids[:200])
    return {"jobs": n, "queued": queued - 1, "per_job": (after - before) / n, "record": record,
            "message": (queue_after - queue_before) / n, "submit_per_s": n / took}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check that it runs")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--redis-jobs", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.nodes, args.jobs, args.repeats, args.redis_jobs = 100, 10, 10_000, 3, 300

    rows, worst = [], 0.0
    for shape in ("cold", "full", "steady"):
        snapshot = big_snapshot(args.models, args.nodes, args.jobs, shape)
        queued = sum(d.total for d in snapshot.demand.values())
        times, actions = time_plan(snapshot, args.repeats)
        p50 = statistics.median(times)
        worst = max(worst, p50)
        rows.append([shape, len(snapshot.models), len(snapshot.nodes), queued,
                     sum(len(n.resident) for n in snapshot.nodes.values()), actions, min(times), p50, max(times)])
    print(f"plan() on synthetic clusters ({NODE_GB} GB nodes, 4 model-workers each), {args.repeats} runs each:")
    print(table(["shape", "models", "nodes", "queued_jobs", "resident", "actions", "min_ms", "p50_ms", "max_ms"], rows))

    with Services() as services:
        mem = redis_memory(services, args.redis_jobs)
    print(f"\nRedis memory per queued job ({mem['jobs']} jobs, 100-char prompt, no workers; "
          f"submitted at {mem['submit_per_s']:.0f} jobs/s with 4 threads):")
    print(table(["jobs", "queued", "bytes/job (used_memory)", "job record", "queue message", "other"],
                [[mem["jobs"], mem["queued"], mem["per_job"], mem["record"], mem["message"],
                  mem["per_job"] - mem["record"] - mem["message"]]], digits=0))
    if mem["queued"] != mem["jobs"]:
        raise SystemExit(f"only {mem['queued']} of {mem['jobs']} jobs are queued")
    plan_ok, mem_ok = worst <= PLAN_TARGET_MS, mem["per_job"] <= MEMORY_TARGET_B
    print(f"HEADLINE scale: plan() worst median {worst:.2f} ms for {args.models} models/{args.nodes} nodes/"
          f"{args.jobs} jobs (target <= {PLAN_TARGET_MS:.0f} ms {'MET' if plan_ok else 'MISSED'}); "
          f"Redis {mem['per_job']:.0f} B per queued job "
          f"(target <= {MEMORY_TARGET_B} B {'MET' if mem_ok else 'MISSED'})")


if __name__ == "__main__":
    main()
