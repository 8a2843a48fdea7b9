"""GET /metrics: Prometheus text, built on every scrape from what Redis holds.

Gauges describe now (queue depth per model and priority, jobs queued and running, memory per
node and GPU, resident models, workers, firing alerts, the leader). Counters and histograms
(finished jobs, latency, queue wait, tokens, loads and unloads) are cumulative in this gateway
process: each scrape reads the raw job samples and events added since the previous one, so
they start with what Redis still holds when the gateway starts and reset when it restarts, as
Prometheus counters may. Scrape one gateway (or aggregate with ``max``), not the sum of several.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mm import alerts, deadlines, keys, metrics, registry, replies, result_cache
from mm.gateway import status
from mm.gateway.base import BaseHandler, Gateway
from mm.scheduling.reader import read_demand
from mm.settings import Settings

log = logging.getLogger("mm.gateway")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
PAGE = 5000


class _Histogram:
    """Cumulative bucket counts and sum of one label set."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0

        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Totals:
    """The cumulative figures, advanced incrementally from the raw sample and event streams."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sample_id = "0-0"
        self.event_id = "0-0"
        self.finished: dict[tuple[str, str], int] = {}
        self.expired: dict[str, int] = {}  # model -> jobs not started by their deadline (also in finished)
        self.tokens: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.queue_wait: dict[str, _Histogram] = {}
        self.moves: dict[tuple[str, str, str], int] = {}  # (kind, model, node)

    def _read(self, r: redis.Redis, key: str, after: str) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        while True:
            page = replies.entries(r.xrange(key, "(" + after, "+", count=PAGE))
            for entry_id, data in page:
                after = replies.text(entry_id)
                yield after, data
            if len(page) < PAGE:
                return

    def advance(self, r: redis.Redis) -> None:
        with self.lock:
            for entry_id, data in self._read(r, keys.METRICS_RAW, self.sample_id):
                self.sample_id = entry_id
                sample = metrics._decode_sample(entry_id.encode(), data)
                model = sample["model"]
                key = (model, sample["status"])
                self.finished[key] = self.finished.get(key, 0) + 1
                for kind in ("prompt", "eval"):
                    tk = (model, kind)
                    self.tokens[tk] = self.tokens.get(tk, 0) + int(sample[f"{kind}_tokens"])
                if sample["status"] == "ok":
                    self.latency.setdefault(model, _Histogram(LATENCY_BUCKETS)).observe(sample["latency_s"])
                if sample["error"] == deadlines.ERROR:  # it never started: no submit-to-start time
                    self.expired[model] = self.expired.get(model, 0) + 1
                    continue
                self.queue_wait.setdefault(model, _Histogram(LATENCY_BUCKETS)).observe(sample["queue_wait_s"])
            for entry_id, data in self._read(r, keys.EVENTS, self.event_id):
                self.event_id = entry_id
                try:
                    event = json.loads(data[b"event"])
                except (KeyError, ValueError):
                    continue
                if event.get("kind") in ("load", "unload", "load_failed", "unload_failed") and event.get("model"):
                    key3 = (event["kind"], event["model"], str(event.get("node", "")))
                    self.moves[key3] = self.moves.get(key3, 0) + 1


class MMCollector:
    """A custom collector: reads Redis on every scrape."""

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r = r
        self.settings = settings
        self.totals = Totals()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mm_up", "1 if the gateway could read mm's state from Redis on this scrape")
        started = time.monotonic()
        try:
            families = list(self._families())
        except redis.RedisError as exc:
            log.warning("metrics scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily("mm_scrape_duration_seconds", "Seconds this scrape spent reading Redis")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _families(self) -> Iterator[Metric]:
        r = self.r
        now = metrics.now(r)
        self.totals.advance(r)
        models = sorted(registry.names(r))
        queues = status.queues(r, models, now)
        node_list, extra = status.nodes(r, now)
        yield from self._queue_families(models, queues, now)
        yield from self._job_families(queues, node_list)
        yield from self._total_families()
        yield from self._node_families(node_list, extra)
        yield from self._model_families()
        yield from self._cache_families()
        yield from self._alert_families()
        yield from self._leader_families()

    def _queue_families(self, models: list[str], queues: dict[str, dict[str, Any]], now: float) -> Iterator[Metric]:
        depth = GaugeMetricFamily("mm_queue_depth", "Jobs waiting per model and priority", labels=["model", "priority"])
        oldest = GaugeMetricFamily("mm_queue_oldest_wait_seconds",
                                   "Wait of the oldest queued job per model and priority", labels=["model", "priority"])
        for model, row in queues.items():
            for priority in keys.PRIORITIES:
                depth.add_metric([model, priority], row[priority])
        for model, demand in read_demand(self.r, models, now).items():
            for priority, wait in demand.oldest_wait_s.items():
                oldest.add_metric([model, priority], wait)
        yield depth
        yield oldest

    @staticmethod
    def _job_families(queues: dict[str, dict[str, Any]], node_list: list[dict[str, Any]]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("mm_jobs", "Jobs queued or running now", labels=["state"])
        jobs.add_metric(["queued"], sum(row["total"] for row in queues.values()))
        jobs.add_metric(["running"], sum(w["running"] for n in node_list for w in n["workers"]))
        yield jobs

    def _total_families(self) -> Iterator[Metric]:
        """The cumulative counters and histograms, read under the totals' lock."""
        t = self.totals
        with t.lock:
            finished = CounterMetricFamily("mm_jobs_finished", "Jobs finished, by model and status (ok, error)",
                                           labels=["model", "status"])
            for (model, st), n in sorted(t.finished.items()):
                finished.add_metric([model, st], n)
            yield finished
            expired = CounterMetricFamily("mm_jobs_expired", "Jobs not started by their deadline_s (counted "
                                          "among the finished with status error too)", labels=["model"])
            for model, n in sorted(t.expired.items()):
                expired.add_metric([model], n)
            yield expired
            tokens = CounterMetricFamily("mm_tokens", "Tokens processed by finished jobs", labels=["model", "type"])
            for (model, kind), n in sorted(t.tokens.items()):
                tokens.add_metric([model, kind], n)
            yield tokens
            for name, doc, hists in (
                ("mm_job_latency_seconds", "Submit-to-result time of successful jobs", t.latency),
                ("mm_job_queue_wait_seconds", "Submit-to-start time of finished jobs", t.queue_wait),
            ):
                hist = HistogramMetricFamily(name, doc, labels=["model"])
                for model, h in sorted(hists.items()):
                    hist.add_metric([model], h.buckets(), sum_value=h.sum)
                yield hist
            for kind, name, doc in (("load", "mm_model_loads", "Model loads"),
                                    ("unload", "mm_model_unloads", "Model unloads"),
                                    ("load_failed", "mm_model_load_failures", "Failed model loads"),
                                    ("unload_failed", "mm_model_unload_failures", "Failed model unloads")):
                fam = CounterMetricFamily(name, f"{doc}, by model and node", labels=["model", "node"])
                for (k, model, node), n in sorted(t.moves.items()):
                    if k == kind:
                        fam.add_metric([model, node], n)
                yield fam

    @staticmethod
    def _node_families(node_list: list[dict[str, Any]], extra: dict[str, Any]) -> Iterator[Metric]:
        mem = GaugeMetricFamily("mm_node_memory_bytes", "Model memory per node", labels=["node", "type"])
        gpu = GaugeMetricFamily("mm_gpu_memory_bytes", "Memory per GPU (NVML)", labels=["node", "gpu", "name", "type"])
        node_up = GaugeMetricFamily("mm_node_runtime_up", "1 if the node's runtime answers", labels=["node"])
        resident = GaugeMetricFamily("mm_model_resident_bytes", "Bytes of each resident model",
                                     labels=["node", "model"])
        in_flight = GaugeMetricFamily("mm_model_in_flight", "Jobs running per resident model", labels=["node", "model"])
        bound = GaugeMetricFamily("mm_model_bound_workers", "Workers bound per resident model",
                                  labels=["node", "model"])
        workers = GaugeMetricFamily("mm_workers", "Model-workers per node", labels=["node", "state"])
        slots = GaugeMetricFamily("mm_worker_slots", "Job slots per node", labels=["node", "state"])
        for n in node_list:
            node = n["node"]
            node_up.add_metric([node], 1 if n["runtime_up"] else 0)
            for kind in ("total", "used", "free"):
                mem.add_metric([node, kind], n["memory"][kind])
            for g in n["memory"]["gpus"]:
                for kind in ("total", "used", "free"):
                    gpu.add_metric([node, str(g.get("index", "")), str(g.get("name", "")), kind], g.get(kind, 0))
            for m in n["resident"]:
                resident.add_metric([node, m["model"]], m["size"])
                in_flight.add_metric([node, m["model"]], m["in_flight"])
                bound.add_metric([node, m["model"]], len(m["workers"]))
            ws = n["workers"]
            workers.add_metric([node, "bound"], sum(1 for w in ws if w["bound"]))
            workers.add_metric([node, "idle"], sum(1 for w in ws if not w["bound"]))
            slots.add_metric([node, "busy"], sum(w["running"] for w in ws))
            slots.add_metric([node, "total"], sum(w["slots"] for w in ws))
        yield from (mem, gpu, node_up, resident, in_flight, bound, workers, slots)
        lost = GaugeMetricFamily("mm_workers_lost", "Registered workers whose heartbeat expired")
        lost.add_metric([], len(extra["gone_workers"]))
        yield lost

    def _model_families(self) -> Iterator[Metric]:
        reg = GaugeMetricFamily("mm_model_info", "Registered models (value 1), with pinned and size",
                                labels=["model", "pinned"])
        size = GaugeMetricFamily("mm_model_size_bytes", "Expected resident size of each registered model",
                                 labels=["model"])
        for name, entry in sorted(registry.all_models(self.r).items()):
            reg.add_metric([name, str(entry.pinned or name in self.settings.pinned).lower()], 1)
            size.add_metric([name], entry.size)
        yield reg
        yield size

    def _cache_families(self) -> Iterator[Metric]:
        """The result cache's counters (kept in Redis, so shared by every gateway) and its size now."""
        cache = result_cache.stats(self.r)
        for outcome, doc in (("hits", "Requests answered from the result cache"),
                             ("misses", "Cacheable requests the result cache did not hold")):
            fam = CounterMetricFamily(f"mm_cache_{outcome}", f"{doc}, by model", labels=["model"])
            for model, counts in sorted(cache["models"].items()):
                fam.add_metric([model], counts[outcome])
            yield fam
        for name, doc in (("stores", "Results stored in the result cache"),
                          ("evictions", "Results evicted from the result cache to keep it under MM_CACHE_MAX_BYTES")):
            counter = CounterMetricFamily(f"mm_cache_{name}", doc)
            counter.add_metric([], cache[name])
            yield counter
        for name, doc in (("entries", "Results in the result cache (some may have expired, not yet swept)"),
                          ("bytes", "Bytes of results counted against MM_CACHE_MAX_BYTES")):
            gauge = GaugeMetricFamily(f"mm_cache_{name}", doc)
            gauge.add_metric([], cache[name])
            yield gauge

    def _alert_families(self) -> Iterator[Metric]:
        firing = GaugeMetricFamily("mm_alerts_firing", "Alerts firing now (value: the metric's value)",
                                   labels=["rule", "subject"])
        for a in alerts.firing(self.r):
            subject = ",".join(f"{k}={v}" for k, v in sorted(a.get("subject", {}).items()))
            firing.add_metric([a.get("rule", ""), subject], float(a.get("value") or 0.0))
        yield firing
        pending = GaugeMetricFamily("mm_alerts_pending", "Alert conditions holding but not yet firing")
        pending.add_metric([], len(alerts.pending(self.r)))
        yield pending

    def _leader_families(self) -> Iterator[Metric]:
        lead = status.leader(self.r)
        leader = GaugeMetricFamily("mm_leader", "1 while a broker holds the leader lease", labels=["owner"])
        if lead["owner"]:
            leader.add_metric([lead["owner"]], 1)
        yield leader
        fence = GaugeMetricFamily("mm_fence_token", "Newest fencing token issued")
        fence.add_metric([], lead["fence"])
        yield fence


def build_registry(gw: Gateway) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MMCollector(gw.r, gw.settings))
    return reg


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        reg = self.gw.extras.get("prometheus")
        if reg is None:
            reg = self.gw.extras["prometheus"] = build_registry(self.gw)
        text = await self.run(generate_latest, reg)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(text)


def handlers(gw: Gateway) -> list[tuple[Any, ...]]:
    return [(r"/metrics", MetricsHandler, {"gw": gw})]
