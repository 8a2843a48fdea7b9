"""Pure rollup math: percentiles, time buckets and one bucket's figures from raw job samples.

No I/O; :mod:`mm.metrics` reads the samples from Redis and stores what :func:`summarize` returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

MINUTE = 60
HOUR = 3600
RESOLUTIONS = {"minute": MINUTE, "hour": HOUR}

# One raw sample per finished job: field -> type. The order is the stored order (a stream whose
# entries all share one field list is stored compactly by Redis).
SAMPLE_FIELDS: dict[str, type] = {
    "model": str, "digest": str, "node": str, "status": str, "error": str,
    "queue_wait_s": float, "load_s": float, "latency_s": float,
    "prompt_tokens": int, "eval_tokens": int, "tokens_per_s": float,
}
STATUSES = ("ok", "error")
PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation between closest ranks.

    The same definition as numpy's default and ``statistics.quantiles(method="inclusive")``.
    Returns 0.0 for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def bucket_start(ts: float, size: int) -> int:
    """Start (epoch seconds) of the ``size``-second bucket holding ``ts``."""
    return int(ts // size) * size


def summarize(samples: Iterable[dict[str, Any]], loads: int = 0, unloads: int = 0) -> dict[str, Any]:
    """The rollup figures of one model's samples in one bucket.

    Latency percentiles cover successful jobs (a fast failure is not a fast answer); queue wait
    covers every job; tokens/s is the mean generation speed of successful jobs that generated.
    """
    samples = list(samples)
    ok = [s for s in samples if s["status"] == "ok"]
    errors = len(samples) - len(ok)
    latencies = [float(s["latency_s"]) for s in ok]
    waits = [float(s["queue_wait_s"]) for s in samples]
    speeds = [float(s["tokens_per_s"]) for s in ok if float(s["tokens_per_s"]) > 0]
    figures: dict[str, Any] = {
        "count": len(samples),
        "errors": errors,
        "error_rate": errors / len(samples) if samples else 0.0,
    }
    for q in PERCENTILES:
        figures[f"p{q}_latency_s"] = percentile(latencies, q)
    for q in PERCENTILES:
        figures[f"queue_wait_p{q}_s"] = percentile(waits, q)
    figures.update(
        load_s=sum(float(s["load_s"]) for s in samples),
        prompt_tokens=sum(int(s["prompt_tokens"]) for s in samples),
        eval_tokens=sum(int(s["eval_tokens"]) for s in samples),
        tokens_per_s=sum(speeds) / len(speeds) if speeds else 0.0,
        loads=loads,
        unloads=unloads,
    )
    return figures


def group_by_bucket(samples: Iterable[dict[str, Any]], size: int) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Samples (each with an ``at`` time) grouped by (bucket start, model)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for sample in samples:
        groups.setdefault((bucket_start(sample["at"], size), sample["model"]), []).append(sample)
    return groups
