"""mm's policy against Ollama's scheduler (default and tuned), naive FIFO and a lower bound, on four traces.

    python -m bench.schedule [--smoke] [--trace NAME] [--log FILE --models FILE [--memory BYTES]]

Every trace runs through the same ``mm.scheduling.policy.plan`` the live leader calls (see
:mod:`bench.sim_mm`), and through the baselines of :mod:`bench.sim_baselines`, on the physics of
:mod:`bench.simcore`: Ollama as ``ollama serve`` runs out of the box (``ollama-default``:
NUM_PARALLEL 1, MAX_QUEUE 512, MAX_LOADED_MODELS 3) and tuned (``ollama-tuned``: NUM_PARALLEL =
the model's ``parallel``, as mm gets, and a queue that refuses nothing); ``naive-fifo`` is a floor
no real server has. Prints, per trace and scheduler: makespan, mean and p99 latency per priority
(over the jobs answered), loads, the GPU fraction spent loading, failed jobs and, of those, the
ones refused at once (HTTP 503); then the targets and one HEADLINE line.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from bench import traces as tr
from bench.common import GB, ratio, table
from bench.sim_baselines import (
    OLLAMA_ROWS,
    lower_bound,
    simulate_naive,
    simulate_no_swap,
    simulate_ollama,
)
from bench.sim_mm import MMConfig, simulate_mm
from bench.simcore import Outcome, Trace
from mm.scheduling.snapshot import PRIORITY_CLASSES

P99_TARGET = 3.0  # ollama-tuned p99 / mm p99 on swap-heavy traces, at least
LOADS_TARGET = 2.0  # ollama-tuned loads / mm loads on the Zipf trace, at least
DEFAULT, TUNED = OLLAMA_ROWS
MAKESPAN_TARGET = 1.25  # mm makespan / lower bound, at most


def run_trace(trace: Trace, config: MMConfig) -> tuple[dict[str, Outcome], float]:
    """Every scheduler on ``trace``; and the lower bound."""
    outcomes = {"mm": simulate_mm(trace, config)}
    for name, settings in OLLAMA_ROWS.items():
        outcomes[name] = simulate_ollama(trace, name=name, **settings)
    outcomes["naive-fifo"] = simulate_naive(trace)
    outcomes["no-swap-ref"] = simulate_no_swap(trace, config.max_parallel)
    bound = lower_bound(trace, config.workers * config.slots * trace.nodes, config.max_parallel)
    return outcomes, bound


def rows_for(trace: Trace, outcomes: dict[str, Outcome], bound: float) -> list[list]:
    rows = []
    for name, out in outcomes.items():
        row = [f"{trace.name}/{name}", out.makespan]
        for cls in PRIORITY_CLASSES:
            row += [out.mean(cls), out.p99(cls)]
        row += [out.p99(), out.loads, out.gpu_load_fraction, out.failed, out.refused]
        rows.append(row)
    rows.append([f"{trace.name}/lower-bound", bound] + [math.nan] * 7 + ["-", "-", "-", "-"])
    rows.append(rows.pop(-2))  # the no-swap reference last: it is not a scheduler
    return rows


HEADERS = ["trace/scheduler", "makespan_s", "high_mean", "high_p99", "normal_mean", "normal_p99", "low_mean",
           "low_p99", "all_p99", "loads", "load_frac", "failed", "refused"]


def evaluate(results: dict[str, tuple[Trace, dict[str, Outcome], float]]) -> tuple[list[str], str]:
    """Target verdicts (one line each) and the HEADLINE line: both Ollama rows' p99 and loads over
    mm's, refusals, makespan over the lower bound. The targets are held against the tuned row."""
    lines, makespans = [], []
    p99s: dict[str, list[str]] = {DEFAULT: [], TUNED: []}
    loads: dict[str, list[str]] = {DEFAULT: [], TUNED: []}
    refused = []
    all_met = True
    for name, (trace, outs, bound) in results.items():
        mm, tuned = outs["mm"], outs[TUNED]
        for row in (DEFAULT, TUNED):
            p99s[row].append(f"{name} {ratio(outs[row].p99(), mm.p99()):.1f}x")
            loads[row].append(f"{name} {ratio(outs[row].loads, mm.loads):.1f}x")
        refused.append(f"{name} {outs[DEFAULT].refused}/{tuned.refused}/{mm.refused}")
        p99_ratio = ratio(tuned.p99(), mm.p99())
        span_ratio = ratio(mm.makespan, bound)
        makespans.append(f"{name} {span_ratio:.2f}")
        if trace.swap_heavy:
            ok = p99_ratio >= P99_TARGET
            all_met &= ok
            lines.append(f"{'MET ' if ok else 'MISS'} {name}: p99 {TUNED}/mm {p99_ratio:.2f}x (target >= {P99_TARGET}x,"
                         f" swap-heavy: {sum(trace.models[m].size for m in trace.used_models) / GB:.0f} GB of models"
                         f" on {trace.memory * trace.nodes / GB:.0f} GB); {TUNED} p99 is "
                         f"{ratio(tuned.p99(), outs['no-swap-ref'].p99()):.2f}x the no-swap reference's")
        ok = span_ratio <= MAKESPAN_TARGET and mm.failed == 0
        all_met &= ok
        lines.append(f"{'MET ' if ok else 'MISS'} {name}: makespan mm/lower-bound {span_ratio:.3f} (target <= "
                     f"{MAKESPAN_TARGET}; mm failed {mm.failed})")
    if "zipf" in results:
        outs = results["zipf"][1]
        loads_ratio = ratio(outs[TUNED].loads, outs["mm"].loads)
        ok = loads_ratio >= LOADS_TARGET
        all_met &= ok
        lines.append(f"{'MET ' if ok else 'MISS'} zipf: loads {TUNED}/mm {loads_ratio:.2f}x "
                     f"(target >= {LOADS_TARGET}x)")
    headline = (f"HEADLINE schedule: p99 {TUNED}/mm {', '.join(p99s[TUNED])}; p99 {DEFAULT}/mm "
                f"{', '.join(p99s[DEFAULT])} (answered jobs); loads {TUNED}/mm {', '.join(loads[TUNED])}; loads "
                f"{DEFAULT}/mm {', '.join(loads[DEFAULT])}; refused {DEFAULT}/{TUNED}/mm {', '.join(refused)}; "
                f"makespan mm/lower-bound {', '.join(makespans)}; targets {'all met' if all_met else 'NOT all met'}")
    return lines, headline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the first 40 jobs of each trace")
    parser.add_argument("--trace", action="append", help="only these traces (alt-ab, zipf, bursts, replay)")
    parser.add_argument("--log", type=Path, help="replay this job log (JSON lines) instead of the sample")
    parser.add_argument("--models", type=Path, help="the models file (mm runtime --models format) for --log")
    parser.add_argument("--memory", type=float, default=24, help="GB per node for --log (default 24)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes for --log (default 1)")
    parser.add_argument("--tick", type=float, default=MMConfig.tick_s, help="leader tick in seconds")
    parser.add_argument("--workers", type=int, default=MMConfig.workers, help="model-workers per node")
    parser.add_argument("--slots", type=int, default=MMConfig.slots, help="slots per model-worker")
    args = parser.parse_args(argv)

    traces = tr.all_traces(smoke=args.smoke)
    if args.log:
        if not args.models:
            parser.error("--log needs --models")
        traces = [t for t in traces if t.name != "replay"]
        traces.append(tr.replay(args.log, args.models, memory=int(args.memory * GB), nodes=args.nodes))
    if args.trace:
        traces = [t for t in traces if t.name in args.trace]
    config = MMConfig(tick_s=args.tick, workers=args.workers, slots=args.slots)

    print(f"mm policy (mm.scheduling.policy.plan) vs baselines; "
          f"{config.workers} model-workers x {config.slots} slots per node, "
          f"tick {config.tick_s}s, min residency {config.min_residency_s}s, aging {config.aging_s}s, "
          f"safety margin {config.safety_margin / 2**20:.0f} MiB; latencies in seconds")
    results, rows = {}, []
    started = time.perf_counter()
    for trace in traces:
        outcomes, bound = run_trace(trace, config)
        results[trace.name] = (trace, outcomes, bound)
        rows += rows_for(trace, outcomes, bound)
        total_gb = sum(trace.models[m].size for m in trace.used_models) / GB
        print(f"  {trace.name}: {len(trace.jobs)} jobs over {trace.jobs[-1].t:.0f}s, {len(trace.used_models)} models"
              f" ({total_gb:.0f} GB) on {trace.nodes} x {trace.memory / GB:.0f} GB"
              f"{', swap-heavy' if trace.swap_heavy else ''}")
    print()
    print(table(HEADERS, rows))
    print(f"\n{DEFAULT}: Ollama out of the box (NUM_PARALLEL 1, MAX_QUEUE 512, MAX_LOADED_MODELS 3); {TUNED}: "
          f"NUM_PARALLEL = each model's parallel (mm's slots), nothing refused. Latencies are over the jobs "
          f"answered; refused jobs (HTTP 503) are failed and counted apart. naive-fifo: one job at a time, a "
          f"floor no real server has. no-swap-ref: every model always resident, a reference, not a scheduler.")
    print(f"\nsimulated in {time.perf_counter() - started:.1f}s")
    lines, headline = evaluate(results)
    print("\n".join(lines))
    print(headline)


if __name__ == "__main__":
    main()
