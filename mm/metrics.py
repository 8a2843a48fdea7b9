"""Job metrics: one raw sample per finished job, rolled up per model into minute and hour buckets.

Raw samples live in the stream ``mm:metrics:raw`` (the entry id is the finishing time, so a time
range is an ``XRANGE``). Beat's rollup turns every complete minute and hour since its watermarks
into one JSON figure set per model (:func:`mm.rollup.summarize`) in sorted sets scored by bucket
start, then trims everything past its retention, so Redis memory stays flat under a steady load.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import redis

from mm import keys, replies
from mm.errors import ValidationError
from mm.rollup import (
    HOUR,
    MINUTE,
    RESOLUTIONS,
    SAMPLE_FIELDS,
    STATUSES,
    bucket_start,
    group_by_bucket,
    summarize,
)
from mm.settings import Settings
from mm.settings import get as get_settings

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT


log = logging.getLogger("mm.metrics")

# A bucket is rolled up once Redis time is this far past its end (stream ids never go back in time).
GRACE_S = 2.0
PAGE = 5000


def _check_sample(sample: dict[str, Any]) -> dict[FieldT, EncodableT]:
    unknown = sorted(set(sample) - set(SAMPLE_FIELDS))
    if unknown:
        raise ValidationError(unknown[0], f"unknown sample field (known: {', '.join(SAMPLE_FIELDS)})")
    for name in ("model", "status"):
        if not sample.get(name):
            raise ValidationError(name, "is required")
    if sample["status"] not in STATUSES:
        raise ValidationError("status", f"must be one of {STATUSES}, not {sample['status']!r}")
    encoded: dict[FieldT, EncodableT] = {}  # str to str; redis-py's xadd takes this type
    for name, typ in SAMPLE_FIELDS.items():
        value = sample.get(name, "" if typ is str else 0)
        if typ is str:
            if not isinstance(value, str):
                raise ValidationError(name, f"must be a string, not {type(value).__name__}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValidationError(name, f"must be a number, not {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValidationError(name, f"must be a finite number >= 0, not {value!r}")
            value = repr(int(value)) if typ is int else repr(float(value))
        encoded[name] = value
    return encoded


def record_job(r: redis.Redis, *, at: float | None = None, max_samples: int | None = None, **sample: Any) -> None:
    """Record one finished job's sample: model, digest, node, status ("ok"/"error"), error class,
    queue_wait_s, load_s, latency_s, prompt_tokens, eval_tokens, tokens_per_s.

    ``at`` (epoch seconds, default Redis's clock) must not be older than the newest sample.
    A bad sample raises :class:`~mm.errors.ValidationError`; a Redis failure is logged, never
    raised, so that recording cannot fail a job.
    """
    fields = _check_sample(sample)
    max_samples = get_settings().metrics_raw_max if max_samples is None else max_samples
    entry_id = "*" if at is None else f"{int(at * 1000)}-*"
    try:
        r.xadd(keys.METRICS_RAW, fields, id=entry_id, maxlen=max_samples, approximate=True)
    except redis.ResponseError as exc:
        if at is not None:
            raise ValidationError("at", f"{at} is older than the newest recorded sample") from exc
        log.warning("job sample for %s not recorded: %s", sample.get("model"), exc)
    except redis.RedisError as exc:
        log.warning("job sample for %s not recorded: %s", sample.get("model"), exc)


def add_job_sample(pipe: redis.client.Pipeline, **sample: Any) -> None:
    """Queue one finished job's sample (fields as :func:`record_job`) into ``pipe``, for a caller
    that writes it with the job's other bookkeeping in one round trip."""
    pipe.xadd(keys.METRICS_RAW, _check_sample(sample), maxlen=get_settings().metrics_raw_max, approximate=True)


def job_sample(model: str, node: str, submitted_at: float, started_at: float, *, digest: str | None = "",
               timings: dict[str, Any] | None = None, error: str = "") -> dict[str, Any]:
    """A finished job's sample from its times and result timings (clamped: clocks of hosts differ)."""
    timings = timings or {}
    return {
        "model": model, "digest": digest or "", "node": node, "status": "error" if error else "ok", "error": error,
        "queue_wait_s": max(0.0, started_at - submitted_at), "load_s": max(0.0, float(timings.get("load_s", 0.0))),
        "latency_s": max(0.0, time.time() - submitted_at),
        "prompt_tokens": int(timings.get("prompt_tokens", 0)), "eval_tokens": int(timings.get("eval_tokens", 0)),
        "tokens_per_s": max(0.0, float(timings.get("tokens_per_s", 0.0))),
    }


def _id_time(entry_id: bytes) -> float:
    return int(entry_id.split(b"-")[0]) / 1000


def _decode_sample(entry_id: bytes, data: dict[bytes, bytes]) -> dict[str, Any]:
    sample: dict[str, Any] = {"at": _id_time(entry_id)}
    for name, typ in SAMPLE_FIELDS.items():
        raw = data.get(name.encode(), b"")
        sample[name] = raw.decode() if typ is str else typ(float(raw or 0))
    return sample


def _xrange(r: redis.Redis, key: str, start: float, end: float) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Entries with ``start <= time < end`` (epoch seconds), paged."""
    low, high = f"{int(start * 1000)}-0", f"{int(end * 1000) - 1}-18446744073709551615"
    while True:
        page = replies.entries(r.xrange(key, low, high, count=PAGE))
        yield from page
        if len(page) < PAGE:
            return
        low = "(" + replies.text(page[-1][0])


def raw_samples(r: redis.Redis, start: float, end: float, model: str | None = None) -> list[dict[str, Any]]:
    """Raw samples finished in ``[start, end)``, oldest first, each with its ``at`` time."""
    samples = (_decode_sample(i, d) for i, d in _xrange(r, keys.METRICS_RAW, start, end))
    return [s for s in samples if model is None or s["model"] == model]


def load_counts(r: redis.Redis, start: float, end: float) -> dict[tuple[int, str], dict[str, int]]:
    """Loads and unloads per (minute, model) in ``[start, end)``, from the event stream."""
    counts: dict[tuple[int, str], dict[str, int]] = {}
    for entry_id, data in _xrange(r, keys.EVENTS, start, end):
        event = json.loads(data[b"event"])
        if event.get("kind") in ("load", "unload") and event.get("model"):
            # Bucketed by the entry id (Redis's clock), like samples, not by the emitter's clock.
            bucket = counts.setdefault((bucket_start(_id_time(entry_id), MINUTE), event["model"]),
                                       {"load": 0, "unload": 0})
            bucket[event["kind"]] += 1
    return counts


def now(r: redis.Redis) -> float:
    """Redis's clock: the one that stamps samples and events."""
    seconds, micros = r.time()
    return seconds + micros / 1e6


def _oldest_sample_at(r: redis.Redis) -> float | None:
    first = replies.entries(r.xrange(keys.METRICS_RAW, count=1))
    return _id_time(first[0][0]) if first else None


def _store(pipe: redis.client.Pipeline, resolution: str, model: str, start: int, figures: dict[str, Any]) -> None:
    key = keys.metrics_rollup(resolution, model)
    pipe.zremrangebyscore(key, start, start)
    pipe.zadd(key, {json.dumps({"start": start, "model": model} | figures): start})
    pipe.sadd(keys.METRICS_MODELS, model)


def _watermark(r: redis.Redis, resolution: str, default: float, size: int, floor: float) -> int:
    raw = r.hget(keys.METRICS_WATERMARKS, resolution)
    mark = int(raw) if raw else bucket_start(default, size)
    return max(mark, bucket_start(floor, size))


def rollup(r: redis.Redis, settings: Settings, at: float | None = None) -> dict[str, int]:
    """Roll every complete minute and hour since the watermarks up per model, then trim.

    Idempotent: a bucket rolled up twice is stored once. Returns how many minute and hour
    buckets were written and how many raw samples were trimmed.
    """
    at = now(r) if at is None else at
    oldest = _oldest_sample_at(r)
    # Never start before the oldest raw sample (older buckets lost theirs, e.g. while beat was down).
    floor = at - settings.metrics_raw_retention_s if oldest is None else oldest
    default = at if oldest is None else oldest
    done = {"minute": 0, "hour": 0}

    minute = _watermark(r, "minute", default, MINUTE, floor)
    minute_end = bucket_start(at - GRACE_S, MINUTE)
    if minute_end > minute:
        groups = group_by_bucket(raw_samples(r, minute, minute_end), MINUTE)
        moves = load_counts(r, minute, minute_end)
        pipe = r.pipeline()
        for bucket, model in sorted(set(groups) | set(moves)):
            move = moves.get((bucket, model), {"load": 0, "unload": 0})
            _store(pipe, "minute", model, bucket,
                   summarize(groups.get((bucket, model), []), move["load"], move["unload"]))
            done["minute"] += 1
        pipe.execute()
    r.hset(keys.METRICS_WATERMARKS, "minute", max(minute, minute_end))

    hour = _watermark(r, "hour", default, HOUR, floor)
    # An hour needs its minutes rolled up first (loads and unloads are summed from them).
    hour_end = min(bucket_start(at - GRACE_S, HOUR), bucket_start(max(minute, minute_end), HOUR))
    if hour_end <= hour:
        r.hset(keys.METRICS_WATERMARKS, "hour", hour)
    for start in range(hour, hour_end, HOUR):
        groups = group_by_bucket(raw_samples(r, start, start + HOUR), HOUR)
        moved = _summed_moves(r, start)
        pipe = r.pipeline()
        for model in sorted({m for _b, m in groups} | set(moved)):
            move = moved.get(model, {"loads": 0, "unloads": 0})
            summary = summarize(groups.get((start, model), []), move["loads"], move["unloads"])
            _store(pipe, "hour", model, start, summary)
            done["hour"] += 1
        pipe.hset(keys.METRICS_WATERMARKS, "hour", start + HOUR)
        pipe.execute()

    done["trimmed"] = trim(r, settings, at)
    return done


def _summed_moves(r: redis.Redis, hour: int) -> dict[str, dict[str, int]]:
    moved: dict[str, dict[str, int]] = {}
    for model in _members(r, keys.METRICS_MODELS):
        for raw in replies.members(r.zrangebyscore(keys.metrics_rollup("minute", model), hour, hour + HOUR - 1)):
            figures = json.loads(raw)
            if figures["loads"] or figures["unloads"]:
                total = moved.setdefault(model, {"loads": 0, "unloads": 0})
                total["loads"] += figures["loads"]
                total["unloads"] += figures["unloads"]
    return moved


def _members(r: redis.Redis, key: str) -> list[str]:
    return sorted(replies.text(m) for m in r.smembers(key))


def trim(r: redis.Redis, settings: Settings, at: float) -> int:
    """Drop raw samples and rollups past their retention; return how many raw samples went.

    A raw sample is kept until its hour has been rolled up, so hour percentiles stay exact.
    """
    hour_mark = int(r.hget(keys.METRICS_WATERMARKS, "hour") or 0)
    raw_cut = min(at - settings.metrics_raw_retention_s, hour_mark)
    trimmed = r.xtrim(keys.METRICS_RAW, minid=f"{int(raw_cut * 1000)}-0", approximate=False) if raw_cut > 0 else 0
    cuts = {"minute": at - settings.metrics_minute_retention_s, "hour": at - settings.metrics_hour_retention_s}
    for model in _members(r, keys.METRICS_MODELS):
        pipe = r.pipeline()
        for resolution, cut in cuts.items():
            pipe.zremrangebyscore(keys.metrics_rollup(resolution, model), "-inf", f"({cut}")
        for resolution in cuts:
            pipe.exists(keys.metrics_rollup(resolution, model))
        if not any(pipe.execute()[len(cuts):]):
            r.srem(keys.METRICS_MODELS, model)
    return int(trimmed)


def series(r: redis.Redis, model: str, resolution: str = "minute", start: float | None = None,
           end: float | None = None) -> list[dict[str, Any]]:
    """``model``'s rollups at ``resolution`` with bucket start in ``[start, end]``, oldest first."""
    if resolution not in RESOLUTIONS:
        raise ValidationError("resolution", f"must be one of {sorted(RESOLUTIONS)}, not {resolution!r}")
    low = "-inf" if start is None else start
    high = "+inf" if end is None else end
    key = keys.metrics_rollup(resolution, model)
    return [json.loads(raw) for raw in replies.members(r.zrangebyscore(key, low, high))]



def models(r: redis.Redis) -> list[str]:
    """Models that have rollups."""
    return _members(r, keys.METRICS_MODELS)
