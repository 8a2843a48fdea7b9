"""mm's policy on a fleet (hosts x GPUs, one mm node per GPU) against per-host Ollamas, clients round-robin.

    python -m bench.fleet [--smoke] [--hosts 8] [--gpus 4] [--gpu-gb 24] [--trace NAME] [--no-sweep]

mm deploys one node per GPU (a runtime started with ``CUDA_VISIBLE_DEVICES``, ``MM_GPUS``
limiting NVML), so the fleet is ``hosts x gpus`` mm nodes of ``--gpu-gb`` each, all placed by
the one leader's ``mm.scheduling.policy.plan`` (simulated by :mod:`bench.sim_mm`; each node loads one model
at a time, so the fleet can load one per GPU at once).

The baseline is what a team gets without mm: one independent Ollama per host owning the host's
GPUs, clients spread round-robin over the hosts (job ``i`` goes to host ``i % hosts`` whatever
its model). Each is :class:`~bench.sim_baselines.OllamaSim` with ``gpus``, Ollama's scheduler as
``server/sched.go`` has it: a request for a loaded model goes straight to it; the rest queue
(``OLLAMA_MAX_QUEUE``, 512, past which a request is refused) for one loop that loads one model at
a time, on the one GPU with the most free memory where the model takes at most 80% of it, else
over all the host's GPUs; at most 3 models per GPU; eviction by keep_alive then blob path,
draining a busy model when none is idle; keep_alive 5 min. Two settings per layout, as
everywhere: ``-default`` (``OLLAMA_NUM_PARALLEL`` 1, the queue of 512) and ``-tuned`` (each model's
``parallel``, mm's slots, and a queue that refuses nothing). A second layout runs one Ollama per
GPU (job ``i`` to GPU ``i % (hosts x gpus)``).

Traces (:func:`bench.traces.fleet_zipf`: 100 models of 1-20 GB, 785 GB in all, more than the
default fleet's 768 GB; Zipf popularity s=1; 10% high, 70% normal, 20% low):

- ``fleet-zipf``: 12,000 Poisson jobs at 20 jobs/s (10 minutes).
- ``fleet-burst``: 6,000 jobs at 10 jobs/s, plus a burst of 1,500 normal and low jobs for the 5th
  most popular model (8 GB) within 20 s from t=60 s: 75 jobs/s for one model, ~200 jobs running
  at once, far more than one copy's 4 slots.
- sweep: ``fleet-zipf`` with 5 minutes of arrivals at 10, 20, 40, 60 and 80 jobs/s.

Per scheduler: jobs done, makespan, jobs/s (done / makespan), sustained jobs/s (jobs finished
during the middle 80% of the arrival window / its length: what the fleet keeps up with while the
load is offered), p50 and p99 latency overall and per priority, loads, the fraction of GPU time
spent loading, failed jobs and, of those, the ones refused at once (HTTP 503; latencies are over
the jobs answered). Then one HEADLINE line with mm against the per-host Ollamas, tuned and default:
throughput mm/baseline, p99 baseline/mm, loads baseline/mm per trace, refusals, and sustained
mm/baseline at the sweep's highest rate.
"""

from __future__ import annotations

import argparse
import math
import time

from bench import traces as tr
from bench.common import GB, percentile, ratio, table
from bench.sim_baselines import OLLAMA_ROWS, OllamaSim
from bench.sim_mm import MMConfig, MMSim
from bench.simcore import Outcome, Trace
from mm.scheduling.snapshot import PRIORITY_CLASSES

SWEEP_RATES = (10.0, 20.0, 40.0, 60.0, 80.0)
SWEEP_SECONDS = 300.0


def fleet_traces(nodes: int, gpu_gb: float, smoke: bool = False) -> list[Trace]:
    """The fleet traces on ``nodes`` GPUs of ``gpu_gb`` (tiny ones when ``smoke``)."""
    if smoke:
        return [tr.fleet_zipf(n=150, rate_per_s=10, n_models=12, memory_gb=gpu_gb, nodes=nodes),
                tr.fleet_zipf(n=60, rate_per_s=5, n_models=12, memory_gb=gpu_gb, nodes=nodes, burst=60,
                              burst_at_s=3, burst_window_s=2, burst_rank=2, name="fleet-burst")]
    return [tr.fleet_zipf(n=12000, rate_per_s=20, memory_gb=gpu_gb, nodes=nodes),
            tr.fleet_zipf(n=6000, rate_per_s=10, memory_gb=gpu_gb, nodes=nodes, burst=1500, burst_at_s=60,
                          burst_window_s=20, burst_rank=4, name="fleet-burst")]


def sweep_traces(nodes: int, gpu_gb: float, smoke: bool = False) -> list[tuple[float, Trace]]:
    """``fleet-zipf`` at each sweep rate, ``SWEEP_SECONDS`` of arrivals each (tiny when ``smoke``)."""
    if smoke:
        return [(r, tr.fleet_zipf(n=int(r * 10), rate_per_s=r, n_models=12, memory_gb=gpu_gb, nodes=nodes,
                                  name=f"sweep-{r:g}")) for r in (5.0, 10.0)]
    return [(r, tr.fleet_zipf(n=int(r * SWEEP_SECONDS), rate_per_s=r, memory_gb=gpu_gb, nodes=nodes,
                              name=f"sweep-{r:g}")) for r in SWEEP_RATES]


def round_robin(trace: Trace, servers: int, gpus: int, name: str, settings: dict) -> Outcome:
    """``servers`` independent Ollama servers of ``gpus`` GPUs each, with ``settings`` (one of
    :data:`~bench.sim_baselines.OLLAMA_ROWS`); job ``i`` goes to server ``i % servers``."""
    parts: list[list] = [[] for _ in range(servers)]
    for i, job in enumerate(trace.jobs):
        parts[i % servers].append(job)
    merged = Outcome(name, trace.name, nodes=servers * gpus)
    for k, jobs in enumerate(parts):
        if not jobs:
            continue
        sub = Trace(f"{trace.name}@{k}", trace.models, jobs, trace.memory, nodes=1)
        out = OllamaSim(sub, gpus=gpus, name=name, **settings).run()
        for cls in PRIORITY_CLASSES:
            merged.latencies[cls] += out.latencies[cls]
        merged.ends += out.ends
        merged.first_arrival = min(merged.first_arrival, out.first_arrival)
        merged.last_end = max(merged.last_end, out.last_end)
        merged.loads += out.loads
        merged.load_seconds += out.load_seconds
        merged.failed += out.failed
        merged.refused += out.refused
        merged.failed_loads += out.failed_loads
    return merged


def done(out: Outcome) -> int:
    return len(out.all_latencies)


def throughput(out: Outcome) -> float:
    """Jobs done / makespan."""
    return done(out) / out.makespan if out.makespan else math.nan


def sustained(trace: Trace, out: Outcome) -> float:
    """Jobs finished per second during the middle 80% of the arrival window."""
    t0, t1 = trace.jobs[0].t, trace.jobs[-1].t
    lo, hi = t0 + 0.1 * (t1 - t0), t0 + 0.9 * (t1 - t0)
    return sum(lo <= e < hi for e in out.ends) / (hi - lo) if hi > lo else math.nan


def p50(out: Outcome, cls: str | None = None) -> float:
    return percentile(out.all_latencies if cls is None else out.latencies[cls], 50)


HEADERS = ["trace/scheduler", "done", "makespan_s", "jobs/s", "sustained", "p50", "p99", "high_p50", "high_p99",
           "normal_p50", "normal_p99", "low_p50", "low_p99", "loads", "load_frac", "failed", "refused"]


def row(trace: Trace, out: Outcome) -> list:
    cells = [f"{trace.name}/{out.scheduler}", done(out), out.makespan, throughput(out), sustained(trace, out),
             p50(out), out.p99()]
    for cls in PRIORITY_CLASSES:
        cells += [p50(out, cls), out.p99(cls)]
    return cells + [out.loads, out.gpu_load_fraction, out.failed, out.refused]


class Fleet:
    """The schedulers compared on one fleet: mm, and Ollama per host (and per GPU), default and tuned."""

    def __init__(self, hosts: int, gpus: int, config: MMConfig, per_gpu: bool):
        self.hosts, self.gpus, self.config = hosts, gpus, config
        self.nodes = hosts * gpus
        # name -> (servers, GPUs per server, settings)
        self.baselines: dict[str, tuple[int, int, dict]] = {}
        for layout, servers, per_server in ((f"{hosts}x{gpus}", hosts, gpus), (f"{self.nodes}x1", self.nodes, 1)):
            if layout != f"{hosts}x{gpus}" and not per_gpu:
                continue
            for row, settings in OLLAMA_ROWS.items():
                self.baselines[f"ollama-{layout}-rr-{row.removeprefix('ollama-')}"] = (servers, per_server, settings)
        self.per_host = f"ollama-{hosts}x{gpus}-rr-tuned"  # the headline's first baseline
        self.per_host_default = f"ollama-{hosts}x{gpus}-rr-default"
        self.plan_calls, self.plan_seconds = 0, 0.0

    @property
    def names(self) -> list[str]:
        return ["mm", *self.baselines]

    def run(self, trace: Trace) -> dict[str, Outcome]:
        sim = MMSim(trace, self.config)
        outs = {"mm": sim.run()}
        self.plan_calls += sim.ticks
        self.plan_seconds += sim.plan_seconds
        for name, (servers, per_server, settings) in self.baselines.items():
            outs[name] = round_robin(trace, servers, per_server, name, settings)
        return outs


def headline_part(name: str, trace: Trace, mm: Outcome, base: Outcome, base_name: str) -> str:
    return (f"{name} throughput mm/{base_name} {ratio(throughput(mm), throughput(base)):.2f}x (sustained "
            f"{ratio(sustained(trace, mm), sustained(trace, base)):.2f}x), p99 {base_name}/mm "
            f"{ratio(base.p99(), mm.p99()):.1f}x, loads {base_name}/mm {ratio(base.loads, mm.loads):.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny traces: a check that it runs (seconds)")
    parser.add_argument("--hosts", type=int, default=8, help="GPU hosts (default 8)")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs per host, one mm node each (default 4)")
    parser.add_argument("--gpu-gb", type=float, default=24, help="memory per GPU in GB (default 24)")
    parser.add_argument("--trace", action="append", help="only these traces (fleet-zipf, fleet-burst)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the arrival-rate sweep")
    parser.add_argument("--no-per-gpu", action="store_true", help="skip the one-Ollama-per-GPU baseline")
    parser.add_argument("--tick", type=float, default=MMConfig.tick_s, help="leader tick in seconds")
    parser.add_argument("--workers", type=int, default=MMConfig.workers, help="model-workers per mm node (GPU)")
    parser.add_argument("--slots", type=int, default=MMConfig.slots, help="slots per model-worker")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.gpus < 1:
        parser.error("--hosts and --gpus must be at least 1")

    nodes = args.hosts * args.gpus
    traces = fleet_traces(nodes, args.gpu_gb, smoke=args.smoke)
    if args.trace:
        traces = [t for t in traces if t.name in args.trace]
    config = MMConfig(tick_s=args.tick, workers=args.workers, slots=args.slots)
    fleet = Fleet(args.hosts, args.gpus, config, per_gpu=not args.no_per_gpu)
    print(f"fleet: {args.hosts} hosts x {args.gpus} GPUs of {args.gpu_gb:g} GB = {nodes} mm nodes "
          f"({nodes * args.gpu_gb:g} GB). mm: {config.workers} model-workers x {config.slots} slots per node, tick "
          f"{config.tick_s}s, min residency {config.min_residency_s}s, aging {config.aging_s}s, a replica at "
          f"{config.replica_backlog} queued jobs per slot, {config.placement}. ollama-{args.hosts}x{args.gpus}-rr-*: "
          f"one Ollama per host (3 models per GPU, one load at a time), job i -> host i % {args.hosts}"
          + (f"; ollama-{nodes}x1-rr-*: one Ollama per GPU, job i -> GPU i % {nodes}" if not args.no_per_gpu else "")
          + ". -default: NUM_PARALLEL 1, MAX_QUEUE 512; -tuned: NUM_PARALLEL = the model's parallel, no refusals. "
          "Latencies in seconds, over the jobs answered.")
    started = time.perf_counter()
    results: list[tuple[Trace, dict[str, Outcome]]] = []
    rows = []
    for trace in traces:
        t_trace = time.perf_counter()
        total_gb = sum(trace.models[m].size for m in trace.used_models) / GB
        span = trace.jobs[-1].t - trace.jobs[0].t
        outs = fleet.run(trace)
        results.append((trace, outs))
        rows += [row(trace, out) for out in outs.values()]
        print(f"  {trace.name}: {len(trace.jobs)} jobs over {span:.0f}s ({len(trace.jobs) / span:.1f} jobs/s offered),"
              f" {len(trace.used_models)} models ({total_gb:.0f} GB){', swap-heavy' if trace.swap_heavy else ''};"
              f" simulated in {time.perf_counter() - t_trace:.1f}s")
    print()
    print(table(HEADERS, rows))

    sweep = [] if args.no_sweep else sweep_traces(nodes, args.gpu_gb, smoke=args.smoke)
    top = ""
    if sweep:
        print(f"\nsweep: fleet-zipf, {SWEEP_SECONDS if not args.smoke else 10:g}s of arrivals per rate; "
              "sustained jobs/s, p99 latency (s) and refused jobs per scheduler")
        sweep_rows = []
        for rate, trace in sweep:
            outs = fleet.run(trace)
            cells: list = [f"{rate:g} jobs/s", len(trace.jobs)]
            for name in fleet.names:
                cells += [sustained(trace, outs[name]), outs[name].p99(), outs[name].refused]
            sweep_rows.append(cells)
            mm, base = sustained(trace, outs["mm"]), sustained(trace, outs[fleet.per_host])
            top = (f"; sweep at {rate:g} jobs/s: sustained mm {mm:.1f} vs {fleet.per_host} {base:.1f} jobs/s "
                   f"({ratio(mm, base):.2f}x)")
        headers = ["offered", "jobs"]
        for name in fleet.names:
            headers += [f"{name} sust", f"{name} p99", f"{name} refused"]
        print(table(headers, sweep_rows))

    print(f"\nsimulated in {time.perf_counter() - started:.1f}s; {fleet.plan_calls} plan() calls at {nodes} nodes, "
          f"{1000 * fleet.plan_seconds / max(1, fleet.plan_calls):.2f} ms each on average")
    parts = [headline_part(trace.name, trace, outs["mm"], outs[base], base)
             for trace, outs in results for base in (fleet.per_host, fleet.per_host_default)]
    failed = ", ".join(f"{trace.name} " + "/".join(str(outs[n].failed) for n in fleet.names) for trace, outs in results)
    refused = ", ".join(f"{trace.name} " + "/".join(str(outs[n].refused) for n in fleet.names)
                        for trace, outs in results)
    print(f"HEADLINE fleet: {args.hosts}x{args.gpus} GPUs of {args.gpu_gb:g} GB: " + "; ".join(parts)
          + top + f"; failed {'/'.join(fleet.names)}: {failed}; refused: {refused}")


if __name__ == "__main__":
    main()
