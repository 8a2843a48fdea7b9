"""The simulator's vocabulary: trace jobs, traces, the physics of models, and what a run produced.

Physics (the same as ``mm runtime``'s sim engine, so a simulated run can be checked live): a model
takes ``size / load_bandwidth`` seconds to load; a job takes ``prompt_tokens / prompt_rate +
eval_tokens / eval_rate`` seconds, whatever else runs; a resident model runs at most ``parallel``
jobs at once (further ones wait FIFO); loads on one node happen one at a time (one PCIe bus).
Models are described by the runtime's own :class:`~mm.runtime.catalog.ModelSpec`, so a trace's
models file is a valid ``mm runtime --models`` file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import mean, percentile
from mm.runtime.catalog import ModelSpec, spec_from_dict
from mm.scheduling.snapshot import PRIORITY_CLASSES


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: when it arrives, for which model, its priority and its token counts."""

    t: float
    model: str
    priority: str
    prompt_tokens: int
    eval_tokens: int

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "model": self.model, "priority": self.priority,
                "prompt_tokens": self.prompt_tokens, "eval_tokens": self.eval_tokens}


def load_s(spec: ModelSpec) -> float:
    return spec.size / spec.load_bandwidth


def duration(spec: ModelSpec, job: TraceJob) -> float:
    return job.prompt_tokens / spec.prompt_rate + job.eval_tokens / spec.eval_rate


@dataclass
class Trace:
    """Jobs (sorted by arrival) over models, for ``nodes`` nodes of ``memory`` bytes each."""

    name: str
    models: dict[str, ModelSpec]
    jobs: list[TraceJob]
    memory: int
    nodes: int = 1

    def __post_init__(self) -> None:
        self.jobs = sorted(self.jobs, key=lambda j: j.t)
        missing = {j.model for j in self.jobs} - set(self.models)
        if missing:
            raise ValueError(f"trace {self.name}: jobs for models with no spec: {sorted(missing)}")
        bad = {j.priority for j in self.jobs} - set(PRIORITY_CLASSES)
        if bad:
            raise ValueError(f"trace {self.name}: unknown priorities {sorted(bad)}")

    @property
    def used_models(self) -> list[str]:
        return sorted({j.model for j in self.jobs})

    @property
    def swap_heavy(self) -> bool:
        """True when the models it uses cannot all be resident at once: swapping is unavoidable."""
        return sum(self.models[m].size for m in self.used_models) > self.memory * self.nodes

    def scaled(self, factor: float) -> Trace:
        """Every time (arrivals, loads, prompt and eval) multiplied by ``factor``."""
        models = {n: replace(s, load_bandwidth=s.load_bandwidth / factor, prompt_rate=s.prompt_rate / factor,
                             eval_rate=s.eval_rate / factor) for n, s in self.models.items()}
        jobs = [replace(j, t=j.t * factor) for j in self.jobs]
        return Trace(self.name, models, jobs, self.memory, self.nodes)

    def runtime_models(self) -> list[dict[str, Any]]:
        """The models as ``mm runtime --models`` entries (sim engine)."""
        return [{"name": s.name, "engine": "sim", "size": s.size, "load_bandwidth": s.load_bandwidth,
                 "prompt_rate": s.prompt_rate, "eval_rate": s.eval_rate, "parallel": s.parallel}
                for s in self.models.values()]


def read_models(path: Path) -> dict[str, ModelSpec]:
    """A ``mm runtime --models`` JSON file, validated by the runtime's own parser."""
    raw = json.loads(Path(path).read_text())
    specs = [spec_from_dict(item, where=f"{path}: entry {i}") for i, item in enumerate(raw)]
    return {s.name: s for s in specs}


def read_log(path: Path) -> list[TraceJob]:
    """A job log: JSON lines ``{"t", "model", "priority", "prompt_tokens", "eval_tokens"}``.

    ``t`` is seconds (any origin; the log is shifted to start at 0); blank lines and lines starting
    with ``#`` are skipped. Model names without a tag mean ``:latest``, as in Ollama.
    """
    from mm.runtime.catalog import normalize_name

    jobs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
            jobs.append(TraceJob(float(raw["t"]), normalize_name(str(raw["model"])), str(raw.get("priority", "normal")),
                                 int(raw["prompt_tokens"]), int(raw["eval_tokens"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: bad job line ({exc!r}): {line[:120]}") from None
    if not jobs:
        raise ValueError(f"{path}: no jobs")
    t0 = min(j.t for j in jobs)
    return [replace(j, t=j.t - t0) for j in jobs]


@dataclass
class Outcome:
    """What one scheduler did with one trace."""

    scheduler: str
    trace: str
    latencies: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in PRIORITY_CLASSES})
    first_arrival: float = math.inf
    last_end: float = 0.0
    loads: int = 0
    load_seconds: float = 0.0
    failed: int = 0  # jobs that got no answer, refused ones included
    refused: int = 0  # of those, refused at once (Ollama's OLLAMA_MAX_QUEUE: HTTP 503 "server busy")
    failed_loads: int = 0
    nodes: int = 1
    ends: list[float] = field(default_factory=list)  # when each finished job ended, in finishing order

    def finish(self, job: TraceJob, end: float) -> None:
        self.latencies[job.priority].append(end - job.t)
        self.ends.append(end)
        self.last_end = max(self.last_end, end)

    @property
    def settled(self) -> int:
        """Jobs finished or failed so far."""
        return sum(len(v) for v in self.latencies.values()) + self.failed

    @property
    def makespan(self) -> float:
        return self.last_end - self.first_arrival if self.last_end else math.nan

    @property
    def all_latencies(self) -> list[float]:
        return [x for c in PRIORITY_CLASSES for x in self.latencies[c]]

    @property
    def gpu_load_fraction(self) -> float:
        return self.load_seconds / (self.makespan * self.nodes) if self.makespan else math.nan

    def p99(self, cls: str | None = None) -> float:
        return percentile(self.all_latencies if cls is None else self.latencies[cls], 99)

    def mean(self, cls: str | None = None) -> float:
        return mean(self.all_latencies if cls is None else self.latencies[cls])
