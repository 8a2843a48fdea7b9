"""mm's per-job overhead against a direct runtime call and a bare Celery round trip, side by side.

    python -m bench.overhead [--smoke] [--rounds 5] [--per-round 100] [--seconds 5] [--profile DIR]

One redis-server (AOF on, as mm runs it), one ``mm runtime`` whose model generates in (near)
zero time, an mm node (gpu-broker plus one model-worker with 8 threads, production settings) and
a bare Celery worker (``-P threads -c 8``) on its own queue. Measured in interleaved rounds:

  (a) direct   ollama client -> runtime /api/generate
  (b) celery   send_task(no-op) -> worker -> result fetched
  (c) mm       mm.submit(...).get() -> model-worker -> runtime -> result
  (d) floor    send_task(runtime call) -> bare worker -> runtime -> result

then throughput (jobs/s) with 1, 8 and 64 client threads for each path. (d) is what any
Celery task that calls the runtime pays, with no scheduling and no bookkeeping, so (c - d) / b is
mm's own part of a job in bare Celery round trips (target <= 0.2), (c)/(d) its throughput with 64
clients (target >= 0.8), and a job's Redis commands are counted (target <= 24). From Redis's own
CPU per job the script estimates how many jobs per second one Redis core carries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import GB, Services, child_env, mean, percentile, table

MODEL = "bench-zero:1b"
RUNTIME_MODELS = [{"name": MODEL, "engine": "sim", "size": GB, "load_bandwidth": 1e15, "prompt_rate": 1e9,
                   "eval_rate": 1e9, "parallel": 64}]
PROMPT = "Why is the sky blue? Answer in one short sentence, please."
OPTIONS = {"num_predict": 1, "seed": 1}
OWN_PART_TARGET = 0.2  # (c-d)/b at p50: mm's own part of a job, in bare Celery round trips
THROUGHPUT_TARGET = 0.8  # (c)/(d) jobs/s with 64 client threads
COMMANDS_TARGET = 24  # Redis commands per mm job


def _throughput(call: Callable[[], object], clients: int, seconds: float) -> float:
    """Completed calls per second with ``clients`` threads calling back to back for ``seconds``."""
    stop = time.monotonic() + seconds
    counts = [0] * clients
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            while time.monotonic() < stop:
                call()
                counts[i] += 1
        except Exception as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]!r}")
    return sum(counts) / (time.monotonic() - started)


def _latencies(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cost_per_job(r, call: Callable[[], object], n: int, pids: dict[str, int]) -> dict[str, object]:
    """Redis commands (INFO commandstats) and CPU ms per process, per job on one path.

    The background (heartbeats, the leader's periodic tick) is measured over an idle period as
    long as the run and subtracted.
    """
    def sample() -> tuple[dict[str, int], dict[str, float]]:
        calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
        return calls, {name: _cpu_s(pid) for name, pid in pids.items()}

    def measure(run: Callable[[], None]) -> tuple[dict[str, int], dict[str, float], float]:
        r.config_resetstat()
        _, cpu0 = sample()
        t0 = time.monotonic()
        run()
        took = time.monotonic() - t0
        calls, cpu1 = sample()
        return calls, {k: cpu1[k] - cpu0[k] for k in cpu1}, took

    busy_calls, busy_cpu, busy_s = measure(lambda: [call() for _ in range(n)])
    idle_calls, idle_cpu, _ = measure(lambda: time.sleep(busy_s))
    cmds = {k: (v - idle_calls.get(k, 0)) / n for k, v in busy_calls.items() if k not in ("config", "info")}
    cmds = {k: v for k, v in cmds.items() if v >= 0.05}
    cpu_ms = {k: max(0.0, busy_cpu[k] - idle_cpu[k]) * 1000 / n for k in busy_cpu}
    return {"commands": sum(cmds.values()), "per_command": cmds, "cpu_ms": cpu_ms}


def _py_spy(services: Services, pid: int, name: str, out: Path, seconds: float) -> None:
    exe = shutil.which("py-spy")
    if not exe:
        print("py-spy not installed (pip install py-spy): no profile of", name, file=sys.stderr)
        return
    services.proc([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                   "--format", "raw", "--output", str(out / f"{name}.txt"), "--nonblocking", "--subprocesses"],
                  f"py-spy-{name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check that it runs, not a measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--per-round", type=int, default=100, help="sequential calls per path per round")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles of the mm processes into DIR")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.per_round, args.seconds = 1, 10, 0.5

    with Services() as services:
        redis_url = services.redis()
        os.environ["MM_REDIS_URL"] = redis_url  # before anything imports mm's Celery app
        os.environ["BENCH_REDIS_URL"] = redis_url
        runtime = services.runtime(RUNTIME_MODELS, memory=8 * GB)
        stack = services.stack(redis_url, runtime.url, 8 * GB, tick_s=0.25, heartbeat_s=1.0, min_residency_s=10)
        stack.start_broker()
        stack.start_worker("w1", slots=8)
        noop_worker = services.proc([sys.executable, "-m", "celery", "-A", "bench.noop_app", "worker", "-P", "threads",
                                     "-c", "8", "-Q", "bench.noop", "-l", "WARNING", "--without-gossip",
                                     "--without-mingle", "-n", "noop@bench"], "noop-worker",
                                    env=child_env(BENCH_RUNTIME_URL=runtime.url))
        stack.wait_ready([MODEL], ["w1"])

        import ollama

        import mm
        from bench import noop_app

        local = threading.local()  # one ollama client per client thread, as separate programs would have
        payload = {"model": MODEL, "prompt": PROMPT, "options": OPTIONS, "kind": "generate"}

        def direct() -> object:
            if not hasattr(local, "client"):
                local.client = ollama.Client(host=runtime.url)
            return local.client.generate(model=MODEL, prompt=PROMPT, options=OPTIONS, keep_alive=-1)

        def celery() -> object:
            return noop_app.app.send_task(noop_app.TASK, args=[payload], queue=noop_app.QUEUE).get(timeout=60)

        def via_mm() -> object:
            return mm.submit(MODEL, PROMPT, options=OPTIONS).get(timeout=60)

        def floor() -> object:
            return noop_app.app.send_task(noop_app.RUNTIME_TASK, args=[payload], queue=noop_app.QUEUE).get(timeout=60)

        paths = {"(a) direct runtime": direct, "(b) bare celery": celery, "(c) mm job": via_mm,
                 "(d) celery + runtime": floor}
        via_mm()  # the first job loads the model and binds the worker
        for call in paths.values():
            for _ in range(5):
                call()  # warm connections and code paths
        if not noop_worker.alive():
            raise SystemExit(f"the no-op worker died: {noop_worker.output()[-2000:]}")

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            secs = args.rounds * args.per_round * 0.05 + 10
            for name in ("broker", "w1"):
                _py_spy(services, stack.procs[name].pid, name, args.profile, secs)
            _py_spy(services, os.getpid(), "client", args.profile, secs)
            time.sleep(2)

        samples: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each round
                samples[name] += _latencies(paths[name], args.per_round)
        throughput = {name: {c: _throughput(call, c, args.seconds) for c in (1, 8, 64)} for name, call in paths.items()}
        import redis

        r = redis.Redis.from_url(redis_url)
        pids = {"client": os.getpid(), "mm-worker": stack.procs["w1"].pid, "gpu-broker": stack.procs["broker"].pid,
                "noop-worker": noop_worker.pid, "runtime": runtime.proc.pid, "redis": services.redis_pids[0]}
        costs = {name: _cost_per_job(r, call, 20 if args.smoke else 300, pids) for name, call in paths.items()}

    rows = []
    for name in names:
        ms = [x * 1000 for x in samples[name]]
        rows.append([name, percentile(ms, 50), percentile(ms, 99), mean(ms), len(ms),
                     *(throughput[name][c] for c in (1, 8, 64))])
    print(f"per-job round trips, {len(samples[names[0]])} sequential calls per path "
          f"in {args.rounds} interleaved rounds;"
          f" throughput in jobs/s with 1, 8 and 64 client threads ({args.seconds:.1f}s each)")
    print(table(["path", "p50_ms", "p99_ms", "mean_ms", "n", "jobs/s@1", "jobs/s@8", "jobs/s@64"], rows))
    procs = list(costs[names[0]]["cpu_ms"])
    print("\nwhere the time goes, per job (sequential calls; idle background subtracted): "
          "Redis commands, CPU ms by process")
    print(table(["path", "redis_cmds", *procs, "cpu_total"],
                [[n, costs[n]["commands"], *costs[n]["cpu_ms"].values(), sum(costs[n]["cpu_ms"].values())]
                 for n in names]))
    for name in names[1:]:
        per_cmd = costs[name]["per_command"]
        by_count = sorted(per_cmd.items(), key=lambda kv: -kv[1])
        print(f"  {name} commands: " + ", ".join(f"{k} {v:.1f}" for k, v in by_count))
    _verdicts(samples, throughput, costs, names)


def _verdicts(samples: dict[str, list[float]], throughput: dict[str, dict[int, float]],
              costs: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Print the targets' verdicts, the estimate of what one Redis carries, and the HEADLINE line."""
    a, b, c, d = (samples[n] for n in names)
    r50 = (percentile(c, 50) - percentile(a, 50)) / percentile(b, 50)
    r99 = (percentile(c, 99) - percentile(a, 99)) / percentile(b, 99)
    floor50 = (percentile(d, 50) - percentile(a, 50)) / percentile(b, 50)
    own = r50 - floor50
    thr64 = throughput[names[2]][64] / throughput[names[3]][64]
    commands = float(costs[names[2]]["commands"])
    redis_ms = float(costs[names[2]]["cpu_ms"]["redis"])
    verdicts = [("mm's own part (c-d)/b p50", own, own <= OWN_PART_TARGET, f"<= {OWN_PART_TARGET}"),
                ("throughput (c)/(d) @64 clients", thr64, thr64 >= THROUGHPUT_TARGET, f">= {THROUGHPUT_TARGET}"),
                ("Redis commands per mm job", commands, commands <= COMMANDS_TARGET, f"<= {COMMANDS_TARGET}")]
    for what, value, ok, target in verdicts:
        print(f"{'MET ' if ok else 'MISS'} {what}: {value:.2f} (target {target})")
    print(f"(c-a)/b: p50 {r50:.2f}, p99 {r99:.2f}; (d-a)/b: p50 {floor50:.2f}, the floor for any Celery task "
          f"calling the runtime")
    ceiling = 1000 / redis_ms if redis_ms > 0 else float("inf")
    print(f"one Redis: {redis_ms:.2f} ms of its CPU per mm job, so one Redis core carries about {ceiling:.0f} jobs/s")
    print(f"HEADLINE overhead: mm's own part (c-d)/b p50 {own:.2f} (target <= {OWN_PART_TARGET}); mm/(celery+runtime) "
          f"throughput @64 clients {thr64:.2f}x (target >= {THROUGHPUT_TARGET}); Redis commands per job "
          f"{commands:.1f} (target <= {COMMANDS_TARGET}); (mm-direct)/celery p50 {r50:.2f}x p99 {r99:.2f}x; floor "
          f"(celery+runtime-direct)/celery {floor50:.2f}x; one Redis ~{ceiling:.0f} jobs/s; targets "
          f"{'all met' if all(v[2] for v in verdicts) else 'NOT all met'}")

if __name__ == "__main__":
    main()
