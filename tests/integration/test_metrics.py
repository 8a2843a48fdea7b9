"""Job metrics, rollups, retention, quality metrics and alerts against a real redis-server.

The first test runs jobs through real Celery workers and the embedded runtime; the others write
samples with explicit times (hours of traffic in a second) and call the library the beat tasks call.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
import redis

import mm
from mm import alerts, events, keys, metrics
from mm import settings as mm_settings
from mm.errors import ValidationError
from mm.rollup import HOUR, MINUTE
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

OPTS = {"num_predict": 16, "seed": 1}


@pytest.fixture
def r(redis_url):
    return redis.Redis.from_url(redis_url)


def ref_percentile(values, q):
    """Computed by other code than mm.rollup.percentile: statistics.quantiles' inclusive method."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ref_figures(samples, loads, unloads):
    ok = [s for s in samples if s["status"] == "ok"]
    speeds = [s["tokens_per_s"] for s in ok if s["tokens_per_s"] > 0]
    figures = {"count": len(samples), "errors": len(samples) - len(ok),
               "error_rate": (len(samples) - len(ok)) / len(samples) if samples else 0.0,
               "load_s": sum(s["load_s"] for s in samples), "prompt_tokens": sum(s["prompt_tokens"] for s in samples),
               "eval_tokens": sum(s["eval_tokens"] for s in samples),
               "tokens_per_s": statistics.fmean(speeds) if speeds else 0.0, "loads": loads, "unloads": unloads}
    for q in (50, 95, 99):
        figures[f"p{q}_latency_s"] = ref_percentile([s["latency_s"] for s in ok], q)
        figures[f"queue_wait_p{q}_s"] = ref_percentile([s["queue_wait_s"] for s in samples], q)
    return figures


def assert_figures_equal(stored, expected):
    for name, value in expected.items():
        assert stored[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def synthetic_sample(rng, model):
    ok = rng.random() > 0.1
    return {"model": model, "digest": "sha256:abc", "node": "n1", "status": "ok" if ok else "error",
            "error": "" if ok else "ResponseError", "queue_wait_s": rng.expovariate(2.0),
            "load_s": rng.choice([0.0, 0.0, 0.0, 0.4]), "latency_s": rng.expovariate(0.5),
            "prompt_tokens": rng.randrange(5, 500), "eval_tokens": rng.randrange(0, 300) if ok else 0,
            "tokens_per_s": rng.uniform(20, 80) if ok else 0.0}


def add_event(r, at, kind, model):
    r.xadd(keys.EVENTS, {"event": json.dumps({"kind": kind, "at": at, "model": model, "node": "n1"})},
           id=f"{int(at * 1000)}-*")


def write_traffic(r, rng, start, end, per_minute, models=("m-a:1b", "m-b:1b"), loads_every=7):
    """Samples at random times in [start, end) (in time order), and a load+unload now and then."""
    times = sorted(rng.uniform(start, end) for _ in range(int((end - start) / MINUTE * per_minute)))
    written = []
    for i, at in enumerate(times):
        sample = synthetic_sample(rng, rng.choice(models))
        metrics.record_job(r, at=at, **sample)
        written.append(sample | {"at": int(at * 1000) / 1000})
        if loads_every and i % loads_every == 0:
            add_event(r, at, rng.choice(["load", "unload"]), sample["model"])
    return written


# --- samples from real jobs ---------------------------------------------------------------------

def test_every_finished_job_leaves_one_sample_failures_with_their_error_class(tmp_path, redis_url, r):
    models = [
        sim_model("sim-ok:1b", load_bandwidth=8 * GB, eval_rate=2000),
        sim_model("sim-bad:1b", load_bandwidth=8 * GB, eval_rate=2000, fail_after=2),
    ]
    with sim_node(tmp_path, redis_url, models, 4 * GB, runtime_retries=0):
        good = [mm.submit("sim-ok:1b", f"q {i}", options=OPTS) for i in range(5)]
        bad = [mm.submit("sim-bad:1b", f"q {i}", options=OPTS) for i in range(2)]
        results = [job.get(timeout=60) for job in good]
        for job in bad:
            with pytest.raises(mm.JobFailed):
                job.get(timeout=60)

        # A worker writes a job's sample just after its result.
        wait_for(lambda: len(metrics.raw_samples(r, 0, 2**40)) >= 7, 10, what="7 job samples")
        samples = metrics.raw_samples(r, 0, 2**40)
        ok = [s for s in samples if s["model"] == "sim-ok:1b"]
        failed = [s for s in samples if s["model"] == "sim-bad:1b"]
        assert len(ok) == 5 and len(failed) == 2
        assert all(s["status"] == "ok" and s["error"] == "" and s["node"] == "n1" for s in ok)
        assert all(s["digest"] for s in ok)
        assert sorted(s["eval_tokens"] for s in ok) == sorted(res["timings"]["eval_tokens"] for res in results)
        assert all(s["tokens_per_s"] > 0 and s["latency_s"] >= s["queue_wait_s"] >= 0 for s in ok)
        assert all(s["status"] == "error" and s["error"] == "ResponseError" for s in failed)

        # Rolled up (at a time past the current minute), the figures are those of the raw samples.
        at = metrics.now(r) + 2 * MINUTE
        metrics.rollup(r, mm_settings.load(), at=at)
        minutes = metrics.series(r, "sim-ok:1b", "minute")
        assert sum(m["count"] for m in minutes) == 5 and sum(m["loads"] for m in minutes) == 1
        assert sum(m["errors"] for m in metrics.series(r, "sim-bad:1b", "minute")) == 2


# --- rollups ------------------------------------------------------------------------------------

def test_minute_and_hour_rollups_equal_figures_computed_from_the_raw_samples(r):
    rng = random.Random(3)
    t0 = (metrics.now(r) // HOUR - 5) * HOUR  # three whole hours, ending two hours ago
    written = write_traffic(r, rng, t0, t0 + 3 * HOUR, per_minute=4)
    settings = mm_settings.load()

    done = metrics.rollup(r, settings, at=t0 + 3 * HOUR + 30)

    assert done["hour"] == 6  # 3 hours x 2 models
    checked_minutes = 0
    for model in ("m-a:1b", "m-b:1b"):
        all_events = [json.loads(d[b"event"]) for _i, d in r.xrange(keys.EVENTS)]
        minute_rows = {row["start"]: row for row in metrics.series(r, model, "minute")}
        for start in range(int(t0), int(t0 + 3 * HOUR), MINUTE):
            mine = [s for s in written if s["model"] == model and start <= s["at"] < start + MINUTE]
            moves = [e for e in all_events if e["model"] == model and start <= e["at"] < start + MINUTE]
            if not mine and not moves:
                assert start not in minute_rows
                continue
            expected = ref_figures(mine, sum(e["kind"] == "load" for e in moves),
                                   sum(e["kind"] == "unload" for e in moves))
            assert_figures_equal(minute_rows[start], expected)
            checked_minutes += 1
        hour_rows = metrics.series(r, model, "hour")
        assert [row["start"] for row in hour_rows] == [t0, t0 + HOUR, t0 + 2 * HOUR]
        for row in hour_rows:
            mine = [s for s in written if s["model"] == model and row["start"] <= s["at"] < row["start"] + HOUR]
            moves = [e for e in all_events if e["model"] == model and row["start"] <= e["at"] < row["start"] + HOUR]
            assert_figures_equal(row, ref_figures(mine, sum(e["kind"] == "load" for e in moves),
                                                  sum(e["kind"] == "unload" for e in moves)))
    assert checked_minutes > 300


def test_a_second_rollup_of_the_same_time_changes_nothing(r):
    rng = random.Random(4)
    t0 = (metrics.now(r) // HOUR - 3) * HOUR
    write_traffic(r, rng, t0, t0 + HOUR, per_minute=3)
    settings = mm_settings.load(metrics_raw_retention_s=10 * HOUR)
    metrics.rollup(r, settings, at=t0 + HOUR + 30)
    before = metrics.series(r, "m-a:1b", "minute") + metrics.series(r, "m-a:1b", "hour")

    r.hdel(keys.METRICS_WATERMARKS, "minute", "hour")  # as if the watermarks were lost: all redone
    metrics.rollup(r, settings, at=t0 + HOUR + 30)

    assert metrics.series(r, "m-a:1b", "minute") + metrics.series(r, "m-a:1b", "hour") == before


def test_retention_trims_raw_samples_and_rollups_and_memory_stays_flat_under_steady_load(r):
    rng = random.Random(5)
    settings = mm_settings.load(metrics_raw_retention_s=HOUR, metrics_minute_retention_s=2 * HOUR,
                                metrics_hour_retention_s=4 * HOUR)
    t0 = (metrics.now(r) // HOUR - 9) * HOUR
    our_keys = [keys.METRICS_RAW] + [keys.metrics_rollup(res, m) for res in ("minute", "hour")
                                     for m in ("m-a:1b", "m-b:1b")]
    memory = {}
    for minute in range(8 * 60):  # eight hours of 10 jobs a minute, rolled up every minute
        start = t0 + minute * MINUTE
        write_traffic(r, rng, start, start + MINUTE, per_minute=10, loads_every=0)
        metrics.rollup(r, settings, at=start + MINUTE + 5)
        if (minute + 1) % 60 == 0:
            memory[(minute + 1) // 60] = sum(r.memory_usage(k) or 0 for k in our_keys)

    now = t0 + 8 * HOUR + 5
    oldest_raw = metrics.raw_samples(r, 0, now)[0]["at"]
    assert now - oldest_raw <= HOUR + MINUTE + 5  # the current hour's samples stay until it is rolled up
    assert r.xlen(keys.METRICS_RAW) <= 10 * 61
    for model in ("m-a:1b", "m-b:1b"):
        minutes = metrics.series(r, model, "minute")
        hours = metrics.series(r, model, "hour")
        assert now - minutes[0]["start"] <= 2 * HOUR + MINUTE and len(minutes) <= 121
        assert now - hours[0]["start"] <= 4 * HOUR + HOUR and len(hours) <= 4
    # From hour 5 on every store is at its steady size: memory is flat (within 10%).
    steady = [memory[h] for h in (5, 6, 7, 8)]
    assert max(steady) <= 1.1 * min(steady), memory


def test_raw_samples_are_capped_even_without_rollups(r):
    for _ in range(3000):
        metrics.record_job(r, max_samples=1000, model="m", status="ok", latency_s=1.0)

    assert r.xlen(keys.METRICS_RAW) <= 1000 + 200  # approximate trimming: whole stream nodes go


def test_bad_samples_are_refused(r):
    with pytest.raises(ValidationError, match="model: is required"):
        metrics.record_job(r, status="ok")
    with pytest.raises(ValidationError, match="latency: unknown sample field"):
        metrics.record_job(r, model="m", status="ok", latency=1.0)
    with pytest.raises(ValidationError, match="queue_wait_s: must be a finite number"):
        metrics.record_job(r, model="m", status="ok", queue_wait_s=math.nan)
    with pytest.raises(ValidationError, match="status"):
        metrics.record_job(r, model="m", status="done")
    assert r.xlen(keys.METRICS_RAW) == 0


# --- quality metrics ----------------------------------------------------------------------------

def test_quality_events_come_back_as_stats_by_name_version_and_time_range(r):
    t = metrics.now(r)
    for i, acc in enumerate((0.9, 0.7, 0.5, 0.3)):
        mm.record_metric("Mistral", "v1", at=t - 100 + i * 10, prediction_accuracy=acc, drift=0.1 * i,
                         inference_time=10 + i)
    mm.record_metric("Mistral", "v2", at=t - 95, prediction_accuracy=0.1)

    every = mm.metric_stats("Mistral", "v1")
    late = mm.metric_stats("Mistral", "v1", start=t - 85, end=t)

    assert every["count"] == 4
    acc = every["fields"]["prediction_accuracy"]
    assert (acc["count"], acc["min"], acc["max"]) == (4, 0.3, 0.9)
    assert acc["mean"] == pytest.approx(0.6) and acc["p50"] == pytest.approx(0.6)
    assert acc["p95"] == pytest.approx(ref_percentile([0.3, 0.5, 0.7, 0.9], 95))
    assert every["fields"]["inference_time"]["max"] == 13
    assert late["count"] == 2 and late["fields"]["prediction_accuracy"]["max"] == pytest.approx(0.5)
    assert mm.metric_stats("Mistral", "v2")["fields"]["prediction_accuracy"]["count"] == 1
    assert mm.metric_stats("Llama", "v1") == {"name": "Llama", "version": "v1", "start": None, "end": None,
                                              "count": 0, "fields": {}}


@pytest.mark.parametrize("call, field, words", [
    (lambda: mm.record_metric("Mistral", "v1", prediction_accuracy="high"), "prediction_accuracy", "must be a number"),
    (lambda: mm.record_metric("Mistral", "v1", prediction_accuracy=math.nan), "prediction_accuracy", "finite"),
    (lambda: mm.record_metric("Mistral", "v1", drift=math.inf), "drift", "finite"),
    (lambda: mm.record_metric("Mistral", "v1", accuracy=0.5), "accuracy", "unknown metric field"),
    (lambda: mm.record_metric("Mistral", "v1"), "values", "at least one"),
    (lambda: mm.record_metric("", "v1", drift=0.1), "name", "is not"),
    (lambda: mm.record_metric("Mistral", None, drift=0.1), "version", "must be a string"),
    (lambda: mm.record_metric("Mistral", "v1", at="yesterday", drift=0.1), "at", "epoch seconds"),
    (lambda: mm.metric_stats("Mistral", "v1", start=10, end=5), "start", "after end"),
])
def test_bad_quality_events_get_clear_errors_and_store_nothing(r, call, field, words):
    with pytest.raises(ValidationError) as caught:
        call()

    assert caught.value.field == field and words in str(caught.value)
    assert not r.keys("mm:quality:*")


# --- alerts -------------------------------------------------------------------------------------

class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Hook.received
    server.shutdown()


def alert_lines(caplog):
    return [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("ALERT")]


def test_an_alert_fires_once_and_clears_with_log_stream_and_webhook(r, webhook, caplog):
    url, received = webhook
    settings = mm_settings.load(alert_rules="error_rate > 0.5; prediction_accuracy < 0.3", alert_window_s=60.0,
                                alert_webhook=url)
    caplog.set_level(logging.INFO, logger="mm.alerts")
    t = metrics.now(r)
    for i in range(4):
        metrics.record_job(r, at=t + i, model="m-a:1b", status="error", error="ResponseError")
    metrics.record_job(r, at=t + 4, model="m-b:1b", status="ok", latency_s=1.0)
    mm.record_metric("Mistral", "v1", at=t, prediction_accuracy=0.19, drift=0.11, inference_time=12.7)

    first = alerts.evaluate(r, settings, at=t + 10)
    second = alerts.evaluate(r, settings, at=t + 20)

    assert sorted((a["state"], a["metric"], json.dumps(a["subject"])) for a in first) == [
        ("firing", "error_rate", '{"model": "m-a:1b"}'),
        ("firing", "prediction_accuracy", '{"name": "Mistral", "version": "v1"}')]
    assert second == []
    assert alert_lines(caplog) == [
        ("ALERT error_rate higher than 0.5, {'model': 'm-a:1b', 'error_rate': 1.0, 'jobs': 4, 'errors': 4, "
         "'window_s': 60.0}"),
        ("ALERT prediction_accuracy lower than 0.3, {'name': 'Mistral', 'version': 'v1', "
         "'prediction_accuracy': 0.19, 'events': 1, 'window_s': 60.0}"),
    ]
    assert len(alerts.firing(r)) == 2 and r.xlen(keys.ALERTS) == 2
    assert [h["state"] for h in received] == ["firing", "firing"]

    # Good jobs and a good accuracy outweigh the bad ones: both clear, once.
    for i in range(8):
        metrics.record_job(r, at=t + 30 + i, model="m-a:1b", status="ok", latency_s=1.0)
    mm.record_metric("Mistral", "v1", at=t + 30, prediction_accuracy=0.9)
    cleared = alerts.evaluate(r, settings, at=t + 45)
    again = alerts.evaluate(r, settings, at=t + 50)

    assert sorted(a["metric"] for a in cleared) == ["error_rate", "prediction_accuracy"]
    assert {a["state"] for a in cleared} == {"cleared"} and again == []
    assert alerts.firing(r) == [] and r.xlen(keys.ALERTS) == 4
    assert [a["state"] for a in alerts.recent(r)] == ["cleared", "cleared", "firing", "firing"]
    assert sum(line.startswith("ALERT CLEARED") for line in alert_lines(caplog)) == 2
    assert [h["state"] for h in received] == ["firing", "firing", "cleared", "cleared"]
    assert [e["state"] for e in events.recent(r) if e["kind"] == "alert"] == ["cleared", "cleared", "firing", "firing"]


def test_an_alert_with_for_fires_only_after_holding_that_long_and_clears_when_data_stops(r):
    settings = mm_settings.load(alert_rules="p95_latency_s > 30 for 5m", alert_window_s=600)
    t = metrics.now(r)
    metrics.record_job(r, at=t, model="m-a:1b", status="ok", latency_s=45.0)

    assert alerts.evaluate(r, settings, at=t + 1) == []
    assert alerts.pending(r)[0]["rule"] == "p95_latency_s > 30 for 5m"
    assert alerts.evaluate(r, settings, at=t + 200) == []
    fired = alerts.evaluate(r, settings, at=t + 301)
    assert [(a["state"], a["value"]) for a in fired] == [("firing", 45.0)]

    # The sample leaves the 10-minute window: no data, so the alert ends.
    cleared = alerts.evaluate(r, settings, at=t + 700)
    assert [a["state"] for a in cleared] == ["cleared"] and alerts.firing(r) == []


def test_a_failing_webhook_is_logged_not_raised(r, caplog):
    settings = mm_settings.load(alert_rules="errors > 0", alert_webhook="http://127.0.0.1:9/nothing-listens",
                                alert_webhook_timeout_s=0.5)
    caplog.set_level(logging.INFO, logger="mm.alerts")
    t = metrics.now(r)
    metrics.record_job(r, at=t, model="m-a:1b", status="error", error="ResponseError")

    fired = alerts.evaluate(r, settings, at=t + 1)

    assert [a["state"] for a in fired] == ["firing"]
    assert any("alert webhook" in rec.getMessage() and "failed" in rec.getMessage() for rec in caplog.records)


def test_bad_alert_rules_fail_the_evaluation_with_a_clear_error(r):
    with pytest.raises(ValidationError, match="MM_ALERT_RULES: rule 1 'latency > 3': unknown metric 'latency'"):
        alerts.evaluate(r, mm_settings.load(alert_rules="latency > 3"))
