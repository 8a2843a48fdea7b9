"""One trace through the real stack and through Ollama's scheduler (default and tuned), each against the simulator.

    python -m bench.live [--smoke] [--trace zipf] [--jobs 200] [--scale 0.2]

1. mm live: a private redis-server, ``mm runtime`` (sim engine, the trace's models with every time
   multiplied by ``--scale``), a gpu-broker and 4 model-workers x 4 slots as real Celery
   processes; a submitter thread calls ``mm.submit`` at each job's (scaled) arrival time.
   Latency is the job record's ``completed_at - submitted_at``; loads are the ``load`` events.
2. mm simulated: the same scaled trace and settings through :mod:`bench.sim_mm`, fed what the live
   run measured of what the simulator cannot know: each job's real submission time (the submitter
   thread is late by milliseconds) and the control plane's delay, the median ``waited_s`` of the
   live loads (the leader's decision -> the node starting the load). The load count is chaotic:
   20 ms of arrival jitter moves it by up to 20%, so the prediction is for the trace as it ran.
   The uncalibrated prediction (nominal arrivals, no delay) is printed too.
3. Ollama live, twice: a fresh runtime with ``--evict ollama`` (Ollama's scheduler, see
   :mod:`mm.runtime.scheduler`), one client thread per job calling it directly with the official
   ``ollama`` client at the job's arrival time, setting no keep_alive (the server's
   ``OLLAMA_KEEP_ALIVE``: 5 min, scaled). ``ollama-default``: ``OLLAMA_NUM_PARALLEL`` 1 and
   ``OLLAMA_MAX_QUEUE`` 512, as ``ollama serve`` out of the box; ``ollama-tuned``: NUM_PARALLEL =
   the models' ``parallel`` (the slots mm gets) and a queue that refuses nothing. A refused
   request (503) is a failed job, counted in ``refused``. Loads are counted from the runtime's
   log. 4. Each one's simulated prediction (:class:`bench.sim_baselines.OllamaSim`, same settings).

Agreement: mm live vs simulated within 15% on makespan and on loads; each Ollama run vs its
simulation within 5%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, replace

from bench import traces as tr
from bench.common import Services, percentile, table
from bench.sim_baselines import DEFAULT_KEEP_ALIVE_S, OLLAMA_ROWS, simulate_ollama
from bench.sim_mm import MMConfig, simulate_mm
from bench.simcore import Outcome, Trace, TraceJob
from mm.scheduling.snapshot import PRIORITY_CLASSES

AGREEMENT = 0.15
OLLAMA_AGREEMENT = 0.05
TEMPLATE_TOKENS = 10  # "<|user|>" and "\n<|assistant|>" around a prompt count 10 tokens in the sim runtime


def prompt_for(job: TraceJob) -> str:
    """A prompt the sim runtime counts as exactly ``job.prompt_tokens`` tokens."""
    return " ".join(["word"] * max(1, job.prompt_tokens - TEMPLATE_TOKENS))


def _options(job: TraceJob) -> dict:
    return {"num_predict": job.eval_tokens, "seed": 1}


def _at_times(trace: Trace, fire) -> float:
    """Call ``fire(job)`` at each job's arrival time from now; return the start (time.time())."""
    start = time.time()
    for job in trace.jobs:
        delay = start + job.t - time.time()
        if delay > 0:
            time.sleep(delay)
        fire(job)
    return start


@dataclass
class Observed:
    """What the live run measured that the simulator takes as input."""

    trace: Trace  # the trace with each job's real submission time
    command_s: float  # median delay from the leader's decision to a node starting a load


def run_mm_live(services: Services, trace: Trace, cfg: MMConfig) -> tuple[Outcome, Observed]:
    redis_url = services.redis()
    os.environ["MM_REDIS_URL"] = redis_url  # before mm's Celery app is imported
    runtime = services.runtime(trace.runtime_models(), memory=trace.memory)
    stack = services.stack(redis_url, runtime.url, trace.memory, tick_s=cfg.tick_s, heartbeat_s=1.0,
                           min_residency_s=cfg.min_residency_s, aging_s=cfg.aging_s, unload_settle_s=5.0,
                           safety_margin=cfg.safety_margin, size_multiplier=cfg.size_multiplier,
                           default_max_parallel=cfg.max_parallel, placement=cfg.placement,
                           replica_backlog=cfg.replica_backlog)
    stack.start_broker()
    names = [f"w{i}" for i in range(cfg.workers)]
    for name in names:
        stack.start_worker(name, slots=cfg.slots)
    stack.wait_ready(list(trace.models), names, timeout=120)

    import mm
    from mm import keys

    handles: list[tuple[TraceJob, object]] = []
    start = _at_times(trace, lambda job: handles.append(
        (job, mm.submit(job.model, prompt_for(job), priority=job.priority, options=_options(job)))))
    out = Outcome("mm live", trace.name)
    deadline = time.monotonic() + 600
    for _job, handle in handles:
        try:
            handle.get(timeout=max(1.0, deadline - time.monotonic()))
        except (mm.JobFailed, TimeoutError):  # counted as failed below
            pass
    as_ran = []
    for job, handle in handles:
        record = handle.record()
        submitted = float(record["submitted_at"])
        as_ran.append(replace(job, t=submitted - start))
        out.first_arrival = min(out.first_arrival, submitted)
        if record.get("status") != "complete":
            out.failed += 1
            continue
        done = float(record["completed_at"])
        out.latencies[job.priority].append(done - submitted)
        out.last_end = max(out.last_end, done)
    events = [json.loads(e[b"event"]) for _id, e in stack.r.xrange(keys.EVENTS)]
    loads = [e for e in events if e["kind"] == "load"]
    out.loads = len(loads)
    out.load_seconds = sum(float(e.get("seconds", 0)) for e in loads)
    waits = [float(e["waited_s"]) for e in loads if e.get("waited_s") is not None]
    stack.stop()
    runtime.stop()
    return out, Observed(replace(trace, jobs=as_ran), statistics.median(waits) if waits else 0.0)


def ollama_settings(trace: Trace, row: str) -> dict:
    """The simulator's settings for ``row`` of :data:`OLLAMA_ROWS` on ``trace``, as one server can
    have them: one NUM_PARALLEL for all models, so the tuned row needs them to agree."""
    settings = dict(OLLAMA_ROWS[row])
    if settings["num_parallel"] is None:
        parallel = {trace.models[m].parallel for m in trace.used_models}
        if len(parallel) != 1:
            raise SystemExit(f"{row}: the models' parallel differ ({sorted(parallel)}); one OLLAMA_NUM_PARALLEL cannot")
        settings["num_parallel"] = parallel.pop()
    return settings


@contextlib.contextmanager
def _environ(**values: str):
    """Set environment variables for the processes started inside, and restore them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_ollama_live(services: Services, trace: Trace, keep_alive_s: float, row: str, settings: dict) -> Outcome:
    """``trace`` as direct client calls on ``mm runtime --evict ollama`` with ``settings`` as ``OLLAMA_*``."""
    import httpx
    import ollama

    max_queue = settings["max_queue"] if settings["max_queue"] is not None else len(trace.jobs) + 1
    with _environ(OLLAMA_NUM_PARALLEL=str(settings["num_parallel"]), OLLAMA_MAX_QUEUE=str(max_queue),
                  OLLAMA_MAX_LOADED_MODELS="0", OLLAMA_KEEP_ALIVE=f"{keep_alive_s}s"):
        runtime = services.runtime(trace.runtime_models(), memory=trace.memory, evict="ollama")
    out = Outcome(f"{row} live", trace.name)
    lock = threading.Lock()
    threads = []

    def call(job: TraceJob) -> None:
        sent = time.time()
        with lock:
            out.first_arrival = min(out.first_arrival, sent)
        try:
            ollama.Client(host=runtime.url).generate(model=job.model, prompt=prompt_for(job), options=_options(job))
        except ollama.ResponseError as exc:
            with lock:
                out.failed += 1
                out.refused += exc.status_code == 503  # "server busy": OLLAMA_MAX_QUEUE
            return
        except httpx.HTTPError:
            with lock:
                out.failed += 1
            return
        done = time.time()
        with lock:
            out.latencies[job.priority].append(done - sent)
            out.last_end = max(out.last_end, done)

    def fire(job: TraceJob) -> None:
        thread = threading.Thread(target=call, args=(job,), daemon=True)
        thread.start()
        threads.append(thread)

    _at_times(trace, fire)
    for thread in threads:
        thread.join(900)
    runtime.stop()
    took = [float(x) for x in re.findall(r"load model=\S+ num_ctx=\d+ size=.*? took=([\d.]+)s", runtime.output())]
    out.loads, out.load_seconds = len(took), sum(took)
    return out


def live_trace(name: str, jobs: int) -> Trace:
    makers = {"zipf": tr.zipf, "alt-ab": tr.alternating, "bursts": tr.bursts, "replay": tr.replay}
    return tr.truncated(makers[name](), jobs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few jobs, to check that it runs")
    parser.add_argument("--trace", default="zipf", choices=["zipf", "alt-ab", "bursts", "replay"])
    parser.add_argument("--jobs", type=int, default=200, help="the first N jobs of the trace")
    parser.add_argument("--scale", type=float, default=0.2, help="multiply every time in the trace by this")
    parser.add_argument("--skip-ollama", action="store_true", help="only the mm run and its prediction")
    parser.add_argument("--ollama", action="append", choices=list(OLLAMA_ROWS),
                        help="only these Ollama settings (default: both)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trace, args.jobs, args.scale = "alt-ab", 12, 0.05

    trace = live_trace(args.trace, args.jobs).scaled(args.scale)
    cfg = MMConfig().scaled(args.scale)
    keep_alive = DEFAULT_KEEP_ALIVE_S * args.scale
    print(f"trace {trace.name}: first {len(trace.jobs)} jobs, every time x{args.scale} "
          f"({trace.jobs[-1].t:.1f}s of arrivals), {len(trace.used_models)} models on {trace.memory / 1e9:.0f} GB; "
          f"mm: {cfg.workers} workers x {cfg.slots} slots, tick {cfg.tick_s}s, "
          f"min residency {cfg.min_residency_s:.2f}s,"
          f" aging {cfg.aging_s:.1f}s; ollama keep_alive {keep_alive:.0f}s")
    with Services() as services:
        live, observed = run_mm_live(services, trace, cfg)
        predicted = simulate_mm(observed.trace, replace(cfg, command_s=observed.command_s))
        predicted.scheduler = "mm simulated"
        nominal = simulate_mm(trace, cfg)
        nominal.scheduler = "mm simulated, nominal"
        outcomes = [live, predicted, nominal]
        ollama_runs: list[tuple[str, Outcome, Outcome]] = []
        for row in ([] if args.skip_ollama else args.ollama or list(OLLAMA_ROWS)):
            settings = ollama_settings(trace, row)
            ol_live = run_ollama_live(services, trace, keep_alive, row, settings)
            ol_sim = simulate_ollama(trace, name=f"{row} simulated", keep_alive_s=keep_alive, **settings)
            ollama_runs.append((row, ol_live, ol_sim))
            outcomes += [ol_live, ol_sim]

    headers = ["run", "makespan_s", "loads", "load_s", "failed", "refused", "all_mean", "all_p99",
               *(f"{c}_p99" for c in PRIORITY_CLASSES)]
    rows = [[o.scheduler, o.makespan, o.loads, o.load_seconds, o.failed, o.refused, o.mean(), o.p99(),
             *(percentile(o.latencies[c], 99) for c in PRIORITY_CLASSES)] for o in outcomes]
    print(table(headers, rows))
    print(f"mm simulated: the live arrival times and command delay {observed.command_s:.3f}s (median of the live "
          f"loads' waited_s); nominal: the trace's arrival times, no delay")
    sim = predicted
    span_err = abs(live.makespan / sim.makespan - 1) if sim.makespan else math.inf
    loads_err = abs(live.loads / sim.loads - 1) if sim.loads else math.inf
    agree = span_err <= AGREEMENT and loads_err <= AGREEMENT
    line = (f"HEADLINE live: mm live/simulated makespan {live.makespan / sim.makespan:.2f} loads "
            f"{live.loads}/{sim.loads}; within {AGREEMENT:.0%}: {'yes' if agree else 'NO'}")
    for row, ol, ol_sim in ollama_runs:
        ol_span = abs(ol.makespan / ol_sim.makespan - 1) if ol_sim.makespan else math.inf
        ol_loads = abs(ol.loads / ol_sim.loads - 1) if ol_sim.loads else (0.0 if ol.loads == 0 else math.inf)
        ol_agree = ol_span <= OLLAMA_AGREEMENT and ol_loads <= OLLAMA_AGREEMENT
        line += (f"; {row} live/mm live p99 {ol.p99() / live.p99():.1f}x, makespan "
                 f"{ol.makespan / live.makespan:.2f}x, loads {ol.loads}/{live.loads}, refused {ol.refused}/"
                 f"{live.refused}; {row} live/simulated makespan {ol.makespan / ol_sim.makespan:.2f} loads "
                 f"{ol.loads}/{ol_sim.loads}, within {OLLAMA_AGREEMENT:.0%}: {'yes' if ol_agree else 'NO'}")
    print(line)


if __name__ == "__main__":
    main()
