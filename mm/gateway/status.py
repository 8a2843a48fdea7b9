"""The cluster's state as JSON-ready dicts, read from Redis: what /api/stats, the status page and
``mm top`` show. Blocking (Redis calls); the gateway runs these on its thread pool.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, overload

import redis

from mm import alerts, keys, metrics, registry, replies
from mm.batches import records as batch_records
from mm.rollup import RESOLUTIONS, bucket_start, group_by_bucket, summarize
from mm.scheduling.reader import read_demand, read_records
from mm.settings import Settings

JOB_STATUSES = ("queued", "running", "complete", "failed")
LIVE_BATCHES_SHOWN = 20  # the page shows the oldest live batches, and how many there are
FINISHED_BATCHES_SHOWN = 5


@overload
def iso(ts: float) -> str: ...


@overload
def iso(ts: float | None) -> str | None: ...


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with a ``Z`` (Ollama's ``created_at`` format), or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=UTC).isoformat().replace("+00:00", "Z")


def leader(r: redis.Redis) -> dict[str, Any]:
    """Who holds the broker lease now, and the newest fencing token issued."""
    owner, fence = r.mget(keys.BROKER_LEASE, keys.FENCE)
    return {"owner": replies.text(owner) if owner else None, "fence": int(fence) if fence else 0}


def queues(r: redis.Redis, models: list[str], now: float) -> dict[str, dict[str, Any]]:
    """Per model: queued jobs per priority class, their total and the oldest job's wait."""
    demand = read_demand(r, models, now)
    out = {}
    for model in models:
        d = demand.get(model)
        row: dict[str, Any] = {p: (d.queued.get(p, 0) if d else 0) for p in keys.PRIORITIES}
        row["total"] = d.total if d else 0
        row["oldest_wait_s"] = round(max(d.oldest_wait_s.values()), 3) if d and d.oldest_wait_s else 0.0
        out[model] = row
    return out


def nodes(r: redis.Redis, now: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every live node (memory per GPU, resident models with the workers bound to them, workers),
    and the raw records they came from."""
    records = read_records(r)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for hostname, w in sorted(records.workers.items()):
        by_node.setdefault(w["node"], []).append({
            "hostname": hostname, "slots": int(w.get("slots", 0)), "bound": w.get("bound"),
            "running": sum(int(n) for n in w.get("running", {}).values()),
            "last_job_at": w.get("last_job_at") or None,
        })
    out = []
    for name, state in sorted(records.nodes.items()):
        workers = by_node.get(name, [])
        memory = state.get("memory", {})
        resident = []
        for m in state.get("resident", []):
            bound = [w["hostname"] for w in workers if w["bound"] == m["model"]]
            resident.append({
                "model": m["model"], "size": int(m.get("size") or 0), "size_vram": int(m.get("size_vram") or 0),
                "digest": m.get("digest") or "", "loaded_at": m.get("loaded_at") or None,
                "load_s": m.get("load_s") or 0.0, "expires_at": m.get("expires_at"),
                "in_flight": sum(w["running"] for w in workers if w["bound"] == m["model"]), "workers": bound,
            })
        ops = {model: op for model, op in (state.get("ops") or {}).items() if op.get("state") == "running"}
        out.append({
            "node": name, "runtime_url": state.get("runtime_url"), "runtime_up": bool(state.get("runtime_up", True)),
            "runtime_error": state.get("runtime_error"), "warnings": list(state.get("warnings", [])),
            "age_s": round(max(0.0, now - float(state.get("at", now))), 3),
            "memory": {
                "source": memory.get("source", ""), "total": int(memory.get("total", 0)),
                "used": int(memory.get("used", 0)), "free": int(memory.get("free", 0)),
                "gpus": [dict(g) for g in memory.get("gpus", [])],
            },
            "resident": resident, "workers": workers, "operations": ops,
        })
    return out, {"gone_workers": records.gone_workers}


def finished_counts(r: redis.Redis, window_s: float, now: float) -> dict[str, dict[str, int]]:
    """Jobs finished per model in the trailing window: ``{"ok": n, "error": n}``.

    Complete minutes come from the rollups (cheap); the minutes since the rollup watermark from
    the raw samples, so the figures are right whether or not beat is running.
    """
    start = bucket_start(now - window_s, 60)
    mark_raw = r.hget(keys.METRICS_WATERMARKS, "minute")
    mark = max(int(mark_raw), start) if mark_raw else start
    counts: dict[str, dict[str, int]] = {}
    if mark > start:
        for model in metrics.models(r):
            for row in metrics.series(r, model, "minute", start, mark - 1):
                c = counts.setdefault(model, {"ok": 0, "error": 0})
                c["ok"] += int(row["count"]) - int(row["errors"])
                c["error"] += int(row["errors"])
    for sample in metrics.raw_samples(r, mark, now + 1):
        c = counts.setdefault(sample["model"], {"ok": 0, "error": 0})
        c[sample["status"] if sample["status"] in c else "error"] += 1
    return counts


def batch_row(record: dict[str, str], ended: dict[str, int]) -> dict[str, Any]:
    """A batch as the status page draws it: its progress, endpoint and times."""
    final = next((record[f"{s}_at"] for s in batch_records.FINAL if record.get(f"{s}_at")), None)
    return {"id": record["id"], "status": record["status"], "endpoint": record["endpoint"],
            "priority": record.get("priority", "low"), "total": int(record.get("total") or 0), **ended,
            "created_at": float(record["created_at"]), "ended_at": float(final) if final else None}


def batches(r: redis.Redis, live_n: int = LIVE_BATCHES_SHOWN,
            finished_n: int = FINISHED_BATCHES_SHOWN) -> dict[str, Any]:
    """Batches not final yet (oldest first, at most ``live_n``, and how many there are) and the newest
    ``finished_n`` final ones, each with its request counts."""
    live = batch_records.live(r)
    # The newest batches hold at most len(live) live ones: this page holds the newest finished ones.
    ids, _ = batch_records.page(r, None, min(finished_n + len(live), 200))
    live_ids = {b["id"] for b in live}
    newest = (batch_records.get(r, batch_id) for batch_id in ids if batch_id not in live_ids)
    finished = [b for b in newest if b and b["status"] in batch_records.FINAL][:finished_n]
    rows = [batch_row(b, batch_records.counts(r, b["id"])) for b in [*live[:live_n], *finished]]
    return {"live_total": len(live), "live": rows[:min(len(live), live_n)], "finished": rows[min(len(live), live_n):]}


def stats(r: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The job manager API's ``/api/stats``, extended: jobs by status, queues per model and priority, nodes
    with memory per GPU and resident models, workers, the leader and firing alerts."""
    now = metrics.now(r) if now is None else now
    models = sorted(registry.names(r))
    node_list, extra = nodes(r, now)
    by_model = queues(r, models, now)
    finished = finished_counts(r, settings.gateway_stats_window_s, now)
    running = sum(w["running"] for n in node_list for w in n["workers"])
    by_status = {
        "queued": sum(q["total"] for q in by_model.values()), "running": running,
        "complete": sum(c["ok"] for c in finished.values()), "failed": sum(c["error"] for c in finished.values()),
    }
    loaded = [{"model": m["model"], "node": n["node"], "size": m["size"], "size_vram": m["size_vram"],
               "workers": m["workers"], "in_flight": m["in_flight"]} for n in node_list for m in n["resident"]]
    workers = [w for n in node_list for w in n["workers"]]
    return {
        "running": True,
        "at": now,
        "leader": leader(r),
        "queue": {"total_jobs": sum(by_status.values()), "by_status": by_status,
                  "finished_window_s": settings.gateway_stats_window_s},
        "queues": by_model,
        "finished": finished,
        "resources": {
            "vram": {k: sum(n["memory"][k] for n in node_list) for k in ("total", "used", "free")},
            "loaded_models": loaded,
            "nodes": node_list,
        },
        "workers": {"total": len(workers), "bound": sum(1 for w in workers if w["bound"]),
                    "slots": sum(w["slots"] for w in workers), "busy": running, "gone": extra["gone_workers"]},
        "alerts": {"firing": alerts.firing(r), "pending": len(alerts.pending(r))},
        "batches": batches(r),
    }


def _decode_message(raw: bytes | str) -> dict[str, Any]:
    try:
        headers = json.loads(raw).get("headers", {})
    except (ValueError, AttributeError):
        return {}
    return {"job_id": headers.get("id"), "submitted_at": headers.get("mm_submitted")}


def recent_jobs(r: redis.Redis, n: int, now: float | None = None) -> dict[str, Any]:
    """Jobs running now (with their records), the oldest queued ones and the last ``n`` finished."""
    now = metrics.now(r) if now is None else now
    records = read_records(r)
    running = []
    for hostname in sorted(records.workers):
        for job_id in sorted(replies.text(j) for j in r.smembers(keys.worker_inflight(hostname))):
            record = {replies.text(k): replies.text(v) for k, v in r.hgetall(keys.job(job_id)).items()}
            started = float(record.get("started_at") or 0) or None
            running.append({"job_id": job_id, "model": record.get("model"), "priority": record.get("priority"),
                            "kind": record.get("kind"), "worker": hostname, "node": record.get("node"),
                            "started_at": started, "running_s": round(now - started, 3) if started else None})
    queued = []
    for model in sorted(registry.names(r)):
        for step in keys.PRIORITY_STEPS:
            for message in reversed(r.lrange(keys.priority_list(model, step), -n, -1)):

                item = _decode_message(message)
                submitted = item.get("submitted_at")
                queued.append({"job_id": item.get("job_id"), "model": model, "priority": keys.PRIORITY_NAMES[step],
                               "submitted_at": submitted,
                               "waiting_s": round(now - float(submitted), 3) if submitted else None})
    queued.sort(key=lambda j: j["submitted_at"] or 0)
    newest = replies.entries(r.xrevrange(keys.METRICS_RAW, count=n))
    finished = [metrics._decode_sample(entry_id, data) for entry_id, data in newest]
    return {"running": running, "queued": queued[:n], "finished": finished}


def rollups(r: redis.Redis, resolution: str, span_s: float, now: float | None = None,
            model: str | None = None) -> dict[str, Any]:
    """Per-model rollups over the trailing ``span_s``: stored buckets, and the buckets beat has
    not rolled up yet computed from the raw samples (marked ``"live": true``)."""
    now = metrics.now(r) if now is None else now
    size = RESOLUTIONS[resolution]
    start = bucket_start(now - span_s, size)
    mark_raw = r.hget(keys.METRICS_WATERMARKS, resolution)
    mark = max(int(mark_raw), start) if mark_raw else start
    names = [model] if model else sorted(set(metrics.models(r)) | set(registry.names(r)))
    out: dict[str, list[dict[str, Any]]] = {}
    if mark > start:
        for name in names:
            rows = metrics.series(r, name, resolution, start, mark - 1)
            if rows:
                out[name] = rows
    groups = group_by_bucket(metrics.raw_samples(r, mark, now + 1, model), size)
    moves: dict[tuple[int, str], dict[str, int]] = {}
    for (minute, name), move in metrics.load_counts(r, mark, now + 1).items():
        total = moves.setdefault((bucket_start(minute, size), name), {"load": 0, "unload": 0})
        total["load"] += move["load"]
        total["unload"] += move["unload"]
    for bucket, name in sorted(set(groups) | set(moves)):
        if model and name != model:
            continue
        move = moves.get((bucket, name), {"load": 0, "unload": 0})
        row = {"start": bucket, "model": name, "live": True} | summarize(groups.get((bucket, name), []), move["load"],
                                                                         move["unload"])
        out.setdefault(name, []).append(row)
    return {"resolution": resolution, "bucket_s": size, "start": start, "end": now, "rolled_up_until": mark,
            "models": out}
