"""The benchmark traces: seeded generators, and the replay of a recorded job log.

A recorded job log is JSON lines, one job each: ``{"t": 12.5, "model": "llama3:8b", "priority":
"normal", "prompt_tokens": 310, "eval_tokens": 122}`` (``t`` in seconds, any origin). It comes
with a models file in ``mm runtime --models`` format giving each model's size, load bandwidth,
prompt and eval rates and parallel slots. ``python -m bench.traces`` rewrites the shipped sample
(``bench/traces/sample.jsonl`` and ``sample.models.json``), which is synthetic: a seeded working
day of a small team, in the recorded-log format.

Physical figures (all traces): models load at 2 GB/s, so 8 GB takes 4 s; prompts are evaluated
at 1,000-4,000 tokens/s and tokens generated at 20-130 tokens/s depending on model size; each
model serves 4 requests at once.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from bench.common import GB
from bench.simcore import Trace, TraceJob, read_log, read_models
from mm.runtime.catalog import ModelSpec, spec_from_dict

HERE = Path(__file__).resolve().parent / "traces"
SAMPLE_LOG = HERE / "sample.jsonl"
SAMPLE_MODELS = HERE / "sample.models.json"
BANDWIDTH = 2 * GB


def model(name: str, size_gb: float, parallel: int = 4) -> ModelSpec:
    """A model whose speed follows its size: about 130 tokens/s at 1 GB, 30 at 14 GB."""
    return spec_from_dict({
        "name": name, "engine": "sim", "size": int(size_gb * GB), "load_bandwidth": BANDWIDTH,
        "prompt_rate": round(4000 / math.sqrt(size_gb)), "eval_rate": round(130 / math.sqrt(size_gb)),
        "parallel": parallel,
    })


def _tokens(rng: random.Random, prompt_mean: int = 300, eval_mean: int = 120) -> tuple[int, int]:
    return max(8, int(rng.expovariate(1 / prompt_mean))), max(4, int(rng.expovariate(1 / eval_mean)))


def _priority(rng: random.Random, high: float = 0.1, low: float = 0.2) -> str:
    x = rng.random()
    return "high" if x < high else "low" if x < high + low else "normal"


def alternating(n: int = 300, gap_s: float = 1.0, seed: int = 1) -> Trace:
    """A and B (8 GB each) in strict alternation, one job every ``gap_s``, memory for only one."""
    rng = random.Random(seed)
    specs = {s.name: s for s in (model("alt-a:8b", 8), model("alt-b:8b", 8))}
    names = sorted(specs)
    jobs = [TraceJob(i * gap_s, names[i % 2], _priority(rng), *_tokens(rng)) for i in range(n)]
    return Trace("alt-ab", specs, jobs, memory=12 * GB)


ZIPF_SIZES_GB = (1, 2, 2, 4, 4, 4, 5, 5, 5, 7, 8, 8, 8, 9, 9, 12, 14, 14, 16, 20)


def _zipf_arrivals(rng: random.Random, specs: list[ModelSpec], n: int, rate_per_s: float,
                   s: float) -> list[TraceJob]:
    """``n`` Poisson arrivals at ``rate_per_s``, the k-th of ``specs`` chosen ~ 1/k^s."""
    weights = [1 / (k + 1) ** s for k in range(len(specs))]
    t, jobs = 0.0, []
    for _ in range(n):
        spec = rng.choices(specs, weights)[0]
        jobs.append(TraceJob(t, spec.name, _priority(rng), *_tokens(rng)))
        t += rng.expovariate(rate_per_s)
    return jobs


def zipf(n: int = 2000, rate_per_s: float = 1.2, s: float = 1.0, seed: int = 2) -> Trace:
    """Poisson arrivals over 20 models of 1-20 GB on 24 GB; the k-th most popular is chosen ~ 1/k^s.

    Popularity rank and size are shuffled independently, so popular models come in every size.
    """
    rng = random.Random(seed)
    sizes = list(ZIPF_SIZES_GB)
    rng.shuffle(sizes)
    specs = [model(f"zipf-{k:02d}:{size}b", size) for k, size in enumerate(sizes)]
    jobs = _zipf_arrivals(rng, specs, n, rate_per_s, s)
    return Trace("zipf", {sp.name: sp for sp in specs}, jobs, memory=24 * GB)


def bursts(n_bursts: int = 12, period_s: float = 40.0, burst: int = 30, seed: int = 3) -> Trace:
    """Batch bursts of low-priority jobs on rotating models, under interactive high/normal traffic.

    Every ``period_s`` a burst of ``burst`` low jobs arrives within 2 s for one of three batch models
    (8, 9 and 12 GB); meanwhile two chat models (4 and 5 GB) get high-priority jobs (one every 4 s
    on average) and normal ones (one every 8 s). 38 GB of models on 24 GB.
    """
    rng = random.Random(seed)
    batch = [model("batch-x:8b", 8), model("batch-y:9b", 9), model("batch-z:12b", 12)]
    chat = [model("chat-a:4b", 4), model("chat-b:5b", 5)]
    jobs = []
    for b in range(n_bursts):
        start = b * period_s
        target = batch[b % len(batch)]
        jobs += [TraceJob(start + rng.uniform(0, 2), target.name, "low", *_tokens(rng, 600, 150)) for _ in range(burst)]
    horizon = n_bursts * period_s
    for cls, gap in (("high", 4.0), ("normal", 8.0)):
        t = rng.expovariate(1 / gap)
        while t < horizon:
            jobs.append(TraceJob(t, rng.choice(chat).name, cls, *_tokens(rng, 200, 80)))
            t += rng.expovariate(1 / gap)
    specs = {sp.name: sp for sp in batch + chat}
    return Trace("bursts", specs, jobs, memory=24 * GB)


def _poisson(rng: random.Random, start: float, end: float, gap_s: float) -> list[float]:
    """Arrival times of a Poisson stream with mean gap ``gap_s`` between ``start`` and ``end``."""
    times, t = [], start + rng.expovariate(1 / gap_s)
    while t < end:
        times.append(t)
        t += rng.expovariate(1 / gap_s)
    return times


def team_day(day_s: float = 3600.0, night_s: float = 3600.0, batch: int = 5000, seed: int = 5) -> Trace:
    """A team's day, compressed: interactive chat on two models, a nightly batch on a third, embeddings throughout.

    By day, chat (8 and 4 GB; 30% high, 70% normal) comes one job every 4 s per model; at night
    one every 30 s. When night falls, a batch of ``batch`` short low-priority jobs lands on a 14 GB
    model within 10 s. A 1 GB embedding model gets a job every 2 s all along. 27 GB of models on
    24 GB: the batch model and both chat models cannot all stay resident.
    """
    rng = random.Random(seed)
    chat = [model("chat-a:8b", 8), model("chat-b:4b", 4)]
    nightly, embed = model("nightly:14b", 14), model("embed:1b", 1)
    jobs = []
    for spec in chat:
        for start, end, gap in ((0.0, day_s, 4.0), (day_s, day_s + night_s, 30.0)):
            jobs += [TraceJob(t, spec.name, "high" if rng.random() < 0.3 else "normal", *_tokens(rng, 300, 120))
                     for t in _poisson(rng, start, end, gap)]
    jobs += [TraceJob(day_s + rng.uniform(0, 10), nightly.name, "low", *_tokens(rng, 400, 40)) for _ in range(batch)]
    jobs += [TraceJob(t, embed.name, "normal", max(8, int(rng.expovariate(1 / 200))), 1)
             for t in _poisson(rng, 0.0, day_s + night_s, 2.0)]
    specs = {sp.name: sp for sp in (*chat, nightly, embed)}
    return Trace("team-day", specs, sorted(jobs, key=lambda j: j.t), memory=24 * GB)


def fleet_models(n_models: int = 100, seed: int = 6) -> list[ModelSpec]:
    """``n_models`` models whose sizes cycle through :data:`ZIPF_SIZES_GB` (1-20 GB, 7.85 GB on
    average), shuffled: 100 of them make 785 GB. Listed in popularity order (most popular first)."""
    rng = random.Random(seed)
    sizes = [ZIPF_SIZES_GB[k % len(ZIPF_SIZES_GB)] for k in range(n_models)]
    rng.shuffle(sizes)
    return [model(f"fleet-{k:03d}:{size}b", size) for k, size in enumerate(sizes)]


def fleet_zipf(n: int = 12000, rate_per_s: float = 20.0, n_models: int = 100, s: float = 1.0,
               memory_gb: float = 24, nodes: int = 32, burst: int = 0, burst_at_s: float = 60.0,
               burst_window_s: float = 20.0, burst_rank: int = 5, seed: int = 6, name: str = "fleet-zipf") -> Trace:
    """A fleet-sized trace: ``n`` Poisson jobs at ``rate_per_s`` over :func:`fleet_models`, the k-th
    most popular chosen ~ 1/k^s, on ``nodes`` nodes (GPUs) of ``memory_gb`` each.

    With ``burst`` > 0, a burst of that many more jobs (normal and low) for the model of popularity
    rank ``burst_rank`` (0 = most popular) arrives uniformly within ``burst_window_s`` from
    ``burst_at_s``, on top of the Zipf traffic: a hot model that one copy (4 parallel jobs) cannot serve.
    """
    rng = random.Random(seed)
    specs = fleet_models(n_models, seed)
    jobs = _zipf_arrivals(rng, specs, n, rate_per_s, s)
    hot = specs[burst_rank].name
    for _ in range(burst):
        jobs.append(TraceJob(burst_at_s + rng.uniform(0, burst_window_s), hot, _priority(rng, 0.0, 0.5),
                             *_tokens(rng)))
    return Trace(name, {sp.name: sp for sp in specs}, jobs, memory=int(memory_gb * GB), nodes=nodes)


def replay(log: Path = SAMPLE_LOG, models: Path = SAMPLE_MODELS, memory: int = 24 * GB, nodes: int = 1,
           name: str = "replay") -> Trace:
    """A recorded job log (JSON lines) over the models of a ``--models`` file."""
    return Trace(name, read_models(models), read_log(log), memory=memory, nodes=nodes)


def truncated(trace: Trace, n: int) -> Trace:
    """The first ``n`` jobs of ``trace`` (for smoke runs)."""
    return Trace(trace.name, trace.models, trace.jobs[:n], trace.memory, trace.nodes)


def write_sample(seed: int = 4, hours: float = 0.5) -> None:
    """Write the synthetic sample log: a team's coding assistant, chat, embeddings and a nightly-style batch.

    Traffic swells and ebbs (a sine over the period); each user sticks to a model for a while.
    """
    rng = random.Random(seed)
    specs = [model("coder:14b", 14), model("chat:8b", 8), model("chat-small:3b", 3), model("embed:1b", 1, 8),
             model("vision:11b", 11), model("reasoner:20b", 20)]
    popularity = [0.30, 0.28, 0.14, 0.16, 0.05, 0.07]
    horizon = hours * 3600
    lines, t = [], 0.0
    while t < horizon:
        rate = 0.25 + 0.2 * math.sin(2 * math.pi * t / horizon)
        spec = rng.choices(specs, popularity)[0]
        session = 1 + int(rng.expovariate(1 / 3))  # a user sends a few in a row
        for _ in range(session):
            prompt, out = _tokens(rng, 500 if "coder" in spec.name else 250, 10 if "embed" in spec.name else 150)
            prio = "low" if "embed" in spec.name else _priority(rng, 0.15, 0.1)
            lines.append(TraceJob(round(t, 3), spec.name, prio, prompt, out))
            t += rng.expovariate(1 / 2.0)
        t += rng.expovariate(rate)
    for _ in range(150):  # a batch job dumped at the 20-minute mark
        lines.append(TraceJob(round(1200 + rng.uniform(0, 5), 3), "chat-small:3b", "low", *_tokens(rng, 400, 60)))
    lines.sort(key=lambda j: j.t)
    HERE.mkdir(exist_ok=True)
    SAMPLE_LOG.write_text("".join(json.dumps(j.as_json()) + "\n" for j in lines))
    SAMPLE_MODELS.write_text(json.dumps([
        {"name": s.name, "engine": "sim", "size": s.size, "load_bandwidth": s.load_bandwidth,
         "prompt_rate": s.prompt_rate, "eval_rate": s.eval_rate, "parallel": s.parallel} for s in specs
    ], indent=1) + "\n")


def all_traces(smoke: bool = False) -> list[Trace]:
    """The benchmark traces (the first jobs of each when ``smoke``)."""
    traces = [alternating(), zipf(), bursts(), replay(), team_day()]
    return [truncated(t, 40) for t in traces] if smoke else traces


if __name__ == "__main__":
    write_sample()
    jobs = read_log(SAMPLE_LOG)
    print(f"wrote {SAMPLE_LOG} ({len(jobs)} jobs over {jobs[-1].t:.0f} s) and {SAMPLE_MODELS}")
