"""The chaos soak (issue #16): the whole stack under a steady mixed load and random faults.

    python -m bench.chaos [--minutes 60] [--appendfsync everysec|always] [--seed N] [--rate 3]
                          [--every 5-15] [--window 5] [--json out.json] [--keep-logs]

On one machine: a private redis-server (AOF, ``appendfsync`` as asked), two nodes (each an
``mm runtime`` of the sim engine, a gpu-broker and two model-workers; either broker may lead, the
other stands by), celery beat and ``mm gateway``. Four models, of which a node holds two of the
smaller at most, and the cluster never all four. The load comes from ``mm.submit``, the gateway's
Ollama API (generate and chat, streamed and not) and a stock Celery client's ``send_task``
(:mod:`bench.chaos_load`). Every few seconds a fault, at random from a seeded RNG
(:mod:`bench.chaos_faults`): a model-worker SIGKILLed, the leading gpu-broker SIGKILLed or
SIGSTOPped past its lease, a runtime SIGKILLed, Redis, the gateway or beat restarted, and once a
node dropped for good. A supervisor starts again what died (:mod:`bench.chaos_cluster`).

When the time is up the load stops, the system drains (up to ``--drain`` seconds) and the soak
checks (:mod:`bench.chaos_checks`) and prints: jobs, faults by kind, lost, stuck, run again after
they completed, fencing, leaders, memory, the latency of jobs within ``--window`` seconds of a
fault against the others, and what each Redis restart could have lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.chaos_checks import (
    Watch,
    classify_unended,
    count_runs,
    fence_accepts_by_token,
    fence_refusals_by_token,
    fence_violations,
    late_obeyed,
    leader_terms,
    lease_starts,
    memory_failures,
    overlapping_terms,
    settle,
    unexplained,
)
from bench.chaos_cluster import SETTINGS, Cluster, PrivateRedis, RedisControl
from bench.chaos_faults import KINDS, Chaos, Fault
from bench.chaos_load import Entry, Ledger, Load
from bench.common import percentile, table

BOUND_S = 1.0  # appendfsync everysec: what an OS crash may lose is the last second of writes


def _thread(target: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def soak(redis: RedisControl, workdir: Path, *, minutes: float, seed: int, rate: float = 3.0,
         every: tuple[float, float] = (5.0, 15.0), window: float = 5.0, drain_s: float = 180.0,
         appendfsync: str = "always", kinds: tuple[str, ...] = KINDS, drop: bool = True) -> dict[str, Any]:
    """Run the soak on ``redis`` (whose URL every mm process and this one's clients use); its figures.

    Every process it starts is stopped before it returns, however it ends.
    """
    rng = random.Random(seed)
    print(f"chaos soak: seed {seed}, {minutes:g} min, appendfsync {appendfsync}, logs in {workdir}", flush=True)
    cluster = Cluster(workdir, redis)
    ledger = Ledger()
    try:
        cluster.start()
        watch = Watch(redis.url, [n.name for n in cluster.nodes])
        load = Load(ledger, cluster.gateway_url, redis.url, random.Random(rng.random()), rate, seed)
        duration = minutes * 60
        began = time.monotonic()
        drop_at = began + duration * rng.uniform(0.25, 0.75) if drop else float("inf")
        chaos = Chaos(cluster, random.Random(rng.random()), every, SETTINGS["lease_ttl_ms"] / 1000, drop_at, kinds)
        threads = [_thread(watch.run, "chaos-watch"), _thread(load.run, "chaos-load"), _thread(chaos.run, "chaos")]
        time.sleep(duration)
        chaos.stop()
        threads[2].join(60)
        load.stop()
        threads[1].join(60)
        print(f"chaos soak: load stopped after {len(ledger.entries)} accepted jobs; draining", flush=True)
        drained_s = drain(redis.url, load, ledger.entries, drain_s)
        watch.stop()
        threads[0].join(10)
        return report(cluster, ledger, chaos.faults, watch, drained_s, window, seed, minutes, appendfsync,
                      chaos.skipped)
    finally:
        cluster.stop()


def drain(redis_url: str, load: Load, entries: list[Entry], deadline_s: float) -> float:
    """Wait (up to ``deadline_s``) until every client has finished and every accepted job has an
    outcome; the seconds it took. (A client still waiting for the gateway's answer adds its job
    once answered.)"""
    import redis

    began = time.monotonic()
    r = redis.Redis.from_url(redis_url, socket_timeout=10)
    while time.monotonic() - began < deadline_s:
        clients_done = load.wait(2.0)
        try:
            settle(r, entries)
        except redis.RedisError:
            continue
        if clients_done and all(e.outcome for e in entries):
            break
    load.close()
    return time.monotonic() - began


def in_window(entry: Entry, faults: list[Fault], window: float) -> bool:
    return any(entry.accepted_at <= max(f.until, f.at) + window and entry.ended_at >= f.at for f in faults)


def redis_bound(entries: list[Entry], faults: list[Fault]) -> list[tuple[float, int, int]]:
    """Per Redis restart: (when, jobs accepted in the BOUND_S before it, of them lost)."""
    rows = []
    for f in faults:
        if f.kind == "restart_redis":
            recent = [e for e in entries if f.at - BOUND_S <= e.accepted_at <= f.at]
            rows.append((f.at, len(recent), sum(1 for e in recent if e.outcome == "lost")))
    return rows


def report(cluster: Cluster, ledger: Ledger, faults: list[Fault], watch: Watch, drained_s: float, window: float,
           seed: int, minutes: float, appendfsync: str, skipped: dict[str, int]) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(cluster.redis.url, socket_timeout=30)
    entries = ledger.entries
    where = classify_unended(r, entries)
    runtime_logs = [p for n in cluster.nodes for p in n.runtime_logs()]
    runs = count_runs(r, entries, runtime_logs)
    broker_logs = [n.dir / "broker.log" for n in cluster.nodes]
    terms = leader_terms(broker_logs)
    starts = lease_starts(broker_logs)
    late, two_leader_seconds, min_gap = overlapping_terms(terms, starts)
    node_logs = [p for n in cluster.nodes for p in n.dir.glob("*.log")]
    refused = fence_refusals_by_token(node_logs)
    obeyed = late_obeyed(terms, fence_accepts_by_token(node_logs))
    outcomes = Counter(e.outcome for e in entries)
    done = [e for e in entries if e.outcome == "complete" and e.ended_at]
    during = [e.ended_at - e.accepted_at for e in done if in_window(e, faults, window)]
    calm = [e.ended_at - e.accepted_at for e in done if not in_window(e, faults, window)]
    bound = redis_bound(entries, faults)
    return {
        "seed": seed, "minutes": minutes, "appendfsync": appendfsync, "drained_s": round(drained_s, 1),
        "accepted": len(entries), "by_via": dict(Counter(e.via for e in entries)),
        "refused": dict(ledger.refused), "refusal_reasons": dict(Counter(ledger.errors).most_common(8)),
        "outcomes": dict(outcomes), "lost": outcomes.get("lost", 0), "stuck": outcomes.get("stuck", 0),
        "unended": where,
        "failure_reasons": dict(Counter(e.reason[:100] for e in entries if e.outcome == "failed").most_common(10)),
        "duplicated": len(set(runs.after_complete) | set(runs.other_results)),
        "run_after_complete": runs.after_complete, "other_result": runs.other_results,
        "other_result_details": runs.details,
        "lost_details": {e.job_id: f"{e.via}: {e.reason[:160]}" for e in entries if e.outcome == "lost"},
        "runs_mapped": runs.mapped, "completed": outcomes.get("complete", 0), "extra_runs": runs.extra,
        "runs_unmapped_unexplained": unexplained(runs.unmapped, [f.at for f in faults
                                                                  if f.kind in ("kill_runtime", "drop_node")]),
        "faults": dict(Counter(f.kind for f in faults)), "faults_skipped": skipped,
        "fault_log": [(round(f.at, 2), f.kind, f.target) for f in faults],
        "restarts": dict(cluster.restarts),
        "fence_violations": fence_violations(watch.ops), "fenced_ops_seen": len(watch.ops),
        "fence_refusals": sum(refused.values()),
        "late_leader_commands": sum(late.values()), "late_commands_obeyed": sum(obeyed.values()),
        "late_commands_never_arrived": max(0, sum(late.values()) - sum(refused.get(t, 0) for t in late)
                                           - sum(obeyed.values())),
        "two_leader_seconds": two_leader_seconds, "min_term_gap_s": min_gap,
        "memory_load_failures": memory_failures(watch.events),
        "memory_job_failures": sum(1 for e in entries if e.outcome == "failed" and "memory" in e.reason.lower()),
        "events": dict(Counter(e.get("kind") for e in watch.events)),
        "latency": {"fault_n": len(during), "fault_p50": percentile(during, 50), "fault_p99": percentile(during, 99),
                    "calm_n": len(calm), "calm_p50": percentile(calm, 50), "calm_p99": percentile(calm, 99)},
        "redis_restarts": [{"at": at, "accepted_last_s": n, "lost": lost} for at, n, lost in bound],
    }


def passed(rep: dict[str, Any]) -> list[str]:
    """What the soak requires that this run did not meet (empty: it passed)."""
    problems = []
    for name in ("lost", "stuck", "duplicated", "late_commands_obeyed"):
        if rep[name]:
            problems.append(f"{name} {rep[name]}")
    if rep["fence_violations"]:
        problems.append(f"fence violations {rep['fence_violations'][:3]}")
    if rep["memory_job_failures"]:
        problems.append(f"jobs failed for memory (a load the scheduler did not plan) {rep['memory_job_failures']}")
    if rep["memory_load_failures"]:
        problems.append(f"loads failed for memory {rep['memory_load_failures'][:3]}")
    if rep["appendfsync"] == "always" and any(x["lost"] for x in rep["redis_restarts"]):
        problems.append("jobs lost across a Redis restart with appendfsync always")
    if any(x["lost"] > x["accepted_last_s"] for x in rep["redis_restarts"]):
        problems.append("a Redis restart lost more than the last second of submissions")
    return problems


def print_report(rep: dict[str, Any]) -> None:
    o = rep["outcomes"]
    print(table(["jobs accepted", "complete", "failed", "cancelled", "lost", "stuck", "run again after complete",
                 "other result seen", "extra runtime calls", "drained s"],
                [[rep["accepted"], o.get("complete", 0), o.get("failed", 0), o.get("cancelled", 0), rep["lost"],
                  rep["stuck"], len(rep["run_after_complete"]), len(rep["other_result"]), rep["extra_runs"],
                  rep["drained_s"]]], digits=1))
    print()
    print(table(["client", "accepted", "refused"],
                [[v, n, rep["refused"].get(v.removesuffix("+error"), 0)] for v, n in sorted(rep["by_via"].items())]))
    print()
    print(table(["fault", "injected", "skipped"],
                [[k, n, rep["faults_skipped"].get(k, 0)] for k, n in sorted(rep["faults"].items())]))
    print()
    lat = rep["latency"]
    print(table(["jobs", "n", "p50 s", "p99 s"], [["within the fault window", lat["fault_n"], lat["fault_p50"],
                                                  lat["fault_p99"]],
                                                 ["outside it", lat["calm_n"], lat["calm_p50"], lat["calm_p99"]]]))
    print()
    print(table(["check", "value"], [
        ["completed jobs found in the runtime logs", f"{rep['runs_mapped']}/{rep['completed']}"],
        ["  others, not explained by a runtime killed as it answered", len(rep["runs_unmapped_unexplained"])],
        ["load/unload commands seen with tokens", rep["fenced_ops_seen"]],
        ["commands run with an older token", len(rep["fence_violations"])],
        ["stale commands refused (FENCE refused)", rep["fence_refusals"]],
        ["commands sent by a former leader once a newer one held the lease", rep["late_leader_commands"]],
        ["  of them accepted after the newer leader's first (fencing broken)", rep["late_commands_obeyed"]],
        ["  of them neither refused nor accepted (never arrived)", rep["late_commands_never_arrived"]],
        ["seconds in which two leaders sent commands", rep["two_leader_seconds"]],
        ["shortest gap between two leaders' terms s", rep["min_term_gap_s"]],
        ["loads refused for memory", len(rep["memory_load_failures"])],
        ["jobs failed for memory", rep["memory_job_failures"]],
        ["supervisor restarts", ", ".join(f"{k} {v}" for k, v in sorted(rep["restarts"].items()))],
    ]))
    print()
    kills = rep["redis_restarts"]
    print(f"Redis restarts: {len(kills)}; jobs accepted in the {BOUND_S:g} s before each (what appendfsync everysec "
          f"may lose in an OS crash): {[k['accepted_last_s'] for k in kills]}; lost of them: "
          f"{sum(k['lost'] for k in kills)}")
    if rep["failure_reasons"]:
        print("failure reasons: " + json.dumps(rep["failure_reasons"], indent=1))
    for name in ("unended", "lost_details", "other_result_details"):
        if rep[name]:
            print(f"{name}: " + json.dumps(rep[name], indent=1))


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--appendfsync", choices=["everysec", "always"], default="everysec")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=3.0, help="jobs a second, all clients together")
    parser.add_argument("--every", default="5-15", help="seconds between faults, low-high")
    parser.add_argument("--window", type=float, default=5.0, help="seconds after a fault its window lasts")
    parser.add_argument("--drain", type=float, default=180.0, help="most seconds to wait for the jobs to end")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the faults drawn, comma-separated")
    parser.add_argument("--no-drop", action="store_true", help="never drop a node")
    parser.add_argument("--json", type=Path, default=None, help="write the figures there")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the logs and Redis's data go (default: a new /tmp/mm-chaos-* directory)")
    args = parser.parse_args(argv)
    unknown = set(args.kinds.split(",")) - {*KINDS, ""}
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop every process it started, however it is stopped
        signal.signal(sig, _interrupt)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    low, _, high = args.every.partition("-")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mm-chaos-"))
    redis_server = PrivateRedis(workdir / "redis", args.appendfsync)
    os.environ["MM_REDIS_URL"] = redis_server.url  # before anything imports mm
    os.environ["MM_USE_NVML"] = "0"
    try:
        rep = soak(redis_server, workdir, minutes=args.minutes, seed=seed, rate=args.rate,
                   every=(float(low), float(high or low)), window=args.window, drain_s=args.drain,
                   appendfsync=args.appendfsync, kinds=tuple(k for k in args.kinds.split(",") if k),
                   drop=not args.no_drop)
    finally:
        redis_server.stop()
    print_report(rep)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1, default=str))
    problems = passed(rep)
    print(f"HEADLINE chaos: seed {seed}, {rep['accepted']} jobs, {sum(rep['faults'].values())} faults, lost "
          f"{rep['lost']}, stuck {rep['stuck']}, duplicated {rep['duplicated']}: "
          + ("PASS" if not problems else "FAIL (" + "; ".join(problems) + ")"))
    print(f"logs in {workdir}" if args.keep_logs or problems else "", file=sys.stderr)
    if not args.keep_logs and not problems and args.workdir is None:  # a directory it was given stays
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
