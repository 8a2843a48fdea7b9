"""mm's policy against Ollama's scheduler (default and tuned), naive FIFO and a lower bound, on five traces.

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
from bench.common import GB, percentile, ratio, table
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

DEFAULT, TUNED = OLLAMA_ROWS
# Targets, on swap-heavy traces (models exceed memory), held against the tuned row unless named:
STEADY_P99 = 10.0  # zipf, alt-ab: tuned p99 / mm p99, at least
STEADY_LOADS = 2.5  # zipf, alt-ab: tuned loads / mm loads, at least
BURSTY_P99 = 1.0  # bursts, replay: tuned p99 / mm p99, at least (never worse)
BURSTY_DEFAULT_P99 = 2.0  # bursts, replay: default p99 / mm p99, at least
MAKESPAN_TARGET = 1.1  # mm makespan / lower bound, at most
STEADY, BURSTY = ("zipf", "alt-ab"), ("bursts", "replay")
INTERACTIVE = ("high", "normal")

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


def _verdict(ok: bool, text: str) -> str:
    return f"{'MET ' if ok else 'MISS'} {text}"


def _trace_lines(name: str, outs: dict[str, Outcome], bound: float) -> list[str]:
    """The target lines of one trace (see the constants above); empty where none applies."""
    mm, tuned, default, ref = outs["mm"], outs[TUNED], outs[DEFAULT], outs["no-swap-ref"]
    p99, loads = ratio(tuned.p99(), mm.p99()), ratio(tuned.loads, mm.loads)
    best = ratio(tuned.p99(), ref.p99())  # what mm would reach at the no-swap reference's p99
    lines = [_verdict(mm.makespan / bound <= MAKESPAN_TARGET and mm.failed == 0,
                      f"{name}: makespan mm/lower-bound {mm.makespan / bound:.3f} (target <= {MAKESPAN_TARGET}; "
                      f"mm failed {mm.failed})")]
    if name in STEADY:
        lines += [_verdict(p99 >= STEADY_P99, f"{name}: p99 {TUNED}/mm {p99:.2f}x (target >= {STEADY_P99}x; every "
                                              f"model resident would give {best:.2f}x)"),
                  _verdict(loads >= STEADY_LOADS and mm.refused == 0,
                           f"{name}: loads {TUNED}/mm {loads:.2f}x (target >= {STEADY_LOADS}x), mm refused "
                           f"{mm.refused}, {DEFAULT} refused {default.refused}")]
    elif name in BURSTY:
        lines.append(_verdict(p99 >= BURSTY_P99 and ratio(default.p99(), mm.p99()) >= BURSTY_DEFAULT_P99,
                              f"{name}: p99 {TUNED}/mm {p99:.2f}x (target >= {BURSTY_P99}x), {DEFAULT}/mm "
                              f"{ratio(default.p99(), mm.p99()):.2f}x (target >= {BURSTY_DEFAULT_P99}x)"))
    return lines


def interactive_p99(out: Outcome) -> float:
    """p99 latency of the high and normal jobs together: what a person at a chat window waits."""
    return percentile([x for cls in INTERACTIVE for x in out.latencies[cls]], 99)


def evaluate(results: dict[str, tuple[Trace, dict[str, Outcome], float]]) -> tuple[list[str], str]:
    """Target verdicts (one line each) and the HEADLINE line: both Ollama rows' p99 and loads over
    mm's, refusals, makespan over the lower bound, and on team-day the interactive jobs' p99."""
    lines, parts = [], {"p99 tuned": [], "p99 default": [], "loads tuned": [], "refused": [], "makespan": []}
    for name, (_trace, outs, bound) in results.items():
        mm = outs["mm"]
        lines += _trace_lines(name, outs, bound)
        parts["p99 tuned"].append(f"{name} {ratio(outs[TUNED].p99(), mm.p99()):.1f}x")
        parts["p99 default"].append(f"{name} {ratio(outs[DEFAULT].p99(), mm.p99()):.1f}x")
        parts["loads tuned"].append(f"{name} {ratio(outs[TUNED].loads, mm.loads):.1f}x")
        parts["refused"].append(f"{name} {outs[DEFAULT].refused}/{outs[TUNED].refused}/{mm.refused}")
        parts["makespan"].append(f"{name} {ratio(mm.makespan, bound):.2f}")
    if "team-day" in results:
        outs = results["team-day"][1]
        chat = {row: interactive_p99(outs[row]) for row in ("mm", TUNED, DEFAULT)}
        lines.append(f"team-day: interactive (high+normal) p99 mm {chat['mm']:.1f}s, {TUNED} {chat[TUNED]:.1f}s "
                     f"({ratio(chat[TUNED], chat['mm']):.0f}x), {DEFAULT} {chat[DEFAULT]:.1f}s over the jobs it "
                     f"answered ({outs[DEFAULT].refused} refused)")
        parts["makespan"].append(f"team-day interactive p99 {TUNED}/mm {ratio(chat[TUNED], chat['mm']):.0f}x")
    met = all(line.startswith("MET") for line in lines if line[:4] in ("MET ", "MISS"))
    headline = (f"HEADLINE schedule: p99 {TUNED}/mm {', '.join(parts['p99 tuned'])}; p99 {DEFAULT}/mm "
                f"{', '.join(parts['p99 default'])} (answered jobs); loads {TUNED}/mm "
                f"{', '.join(parts['loads tuned'])}; "
                f"refused {DEFAULT}/{TUNED}/mm {', '.join(parts['refused'])}; makespan mm/lower-bound "
                f"{', '.join(parts['makespan'])}; targets {'all met' if met else 'NOT all met'}")
    return lines, headline

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the first 40 jobs of each trace")
    parser.add_argument("--trace", action="append", help="only these traces (alt-ab, zipf, bursts, replay, team-day)")
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
