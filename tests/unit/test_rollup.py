"""Rollup math: percentiles, buckets and one bucket's figures, checked against independent formulas."""

from __future__ import annotations

import random
import statistics

import pytest

from mm.rollup import HOUR, MINUTE, bucket_start, group_by_bucket, percentile, summarize


def reference_percentile(values, q):
    """statistics.quantiles' inclusive method: the same definition, computed by other code."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def sample(model="m", status="ok", latency=1.0, wait=0.5, tps=50.0, at=0.0, prompt=10, evals=20, load=0.0):
    return {"model": model, "status": status, "latency_s": latency, "queue_wait_s": wait, "tokens_per_s": tps,
            "at": at, "prompt_tokens": prompt, "eval_tokens": evals, "load_s": load}


@pytest.mark.parametrize("q", [1, 25, 50, 90, 95, 99])
def test_percentile_matches_the_inclusive_quantile_definition(q):
    rng = random.Random(q)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.expovariate(1.0) for _ in range(n)]
        assert percentile(values, q) == pytest.approx(reference_percentile(values, q), rel=1e-12)


def test_percentile_edges():
    assert percentile([], 95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_bucket_start_floors_to_the_bucket():
    assert bucket_start(119.9, MINUTE) == 60
    assert bucket_start(120.0, MINUTE) == 120
    assert bucket_start(7199.0, HOUR) == 3600


def test_summarize_counts_errors_and_takes_latency_from_successful_jobs_only():
    samples = [sample(latency=s) for s in (1.0, 2.0, 3.0, 4.0)] + [sample(status="error", latency=0.01, tps=0, evals=0)]

    figures = summarize(samples, loads=2, unloads=1)

    assert figures["count"] == 5 and figures["errors"] == 1
    assert figures["error_rate"] == pytest.approx(0.2)
    assert figures["p50_latency_s"] == pytest.approx(2.5)
    assert figures["p99_latency_s"] == pytest.approx(reference_percentile([1.0, 2.0, 3.0, 4.0], 99))
    assert figures["queue_wait_p95_s"] == pytest.approx(0.5)
    assert figures["tokens_per_s"] == pytest.approx(50.0)
    assert figures["eval_tokens"] == 80 and figures["prompt_tokens"] == 50
    assert (figures["loads"], figures["unloads"]) == (2, 1)


def test_summarize_of_nothing_is_all_zero_but_keeps_loads():
    figures = summarize([], loads=1)

    assert figures["count"] == 0 and figures["error_rate"] == 0.0 and figures["p95_latency_s"] == 0.0
    assert figures["loads"] == 1


def test_group_by_bucket_splits_by_minute_and_model():
    samples = [sample("a", at=59.9), sample("a", at=60.0), sample("b", at=61.0), sample("a", at=119.0)]

    groups = group_by_bucket(samples, MINUTE)

    assert {k: len(v) for k, v in groups.items()} == {(0, "a"): 1, (60, "a"): 2, (60, "b"): 1}
