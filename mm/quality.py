"""Model quality metrics: events such as prediction_accuracy, drift and inference_time,
recorded per model name and version and summarized over a time range.

    import mm
    mm.record_metric("Mistral", "v1", prediction_accuracy=0.91, drift=0.11, inference_time=12.7)
    mm.metric_stats("Mistral", "v1", start=time.time() - 3600)["fields"]["prediction_accuracy"]["p95"]

Each series (name, version) is a sorted set scored by event time, trimmed by age and count.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from datetime import datetime
from typing import Any

import redis

from mm import keys, replies, store
from mm.errors import ValidationError
from mm.rollup import percentile
from mm.settings import Settings
from mm.settings import get as get_settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
# Fields with a meaning beyond "a finite number": their allowed range.
RANGES: dict[str, tuple[float, float]] = {
    "prediction_accuracy": (0.0, 1.0),
    "inference_time": (0.0, math.inf),
}


def fields(settings: Settings) -> tuple[str, ...]:
    """The fields a quality event may carry (``MM_QUALITY_FIELDS``)."""
    return tuple(f.strip() for f in settings.quality_fields.split(",") if f.strip())


def _check_name(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__}")
    if not NAME_RE.match(value):
        raise ValidationError(field,
                              f"{value!r} is not 1-200 letters, digits or ._:/@+- starting with a letter or digit")
    return value


def _check_time(field: str, value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(field, f"must be epoch seconds or a datetime, not {value!r}")
    return float(value)


def validate_event(name: Any, version: Any, values: dict[str, Any], known: tuple[str, ...]) -> dict[str, float]:
    """The event's values as floats, or :class:`~mm.errors.ValidationError` naming the bad field."""
    _check_name("name", name)
    _check_name("version", version)
    if not values:
        raise ValidationError("values", f"an event needs at least one of: {', '.join(known)}")
    clean = {}
    for field, value in values.items():
        if field not in known:
            raise ValidationError(field, f"unknown metric field (known: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(field, f"must be a number, not {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValidationError(field, f"must be a finite number, not {value!r}")
        low, high = RANGES.get(field, (-math.inf, math.inf))
        if not low <= value <= high:
            raise ValidationError(field, f"{value!r} is outside {low}..{high}")
        clean[field] = float(value)
    return clean


def record_metric(name: str, version: str, *, at: float | datetime | None = None, r: redis.Redis | None = None,
                  **values: Any) -> dict[str, Any]:
    """Record one quality event for model ``name`` at ``version``; return the stored event.

    Args:
        name: model name, e.g. "Mistral".
        version: model version, e.g. "v1".
        at: event time (epoch seconds or datetime), default now.
        r: Redis client, default the one of ``MM_REDIS_URL``.
        **values: metric fields (``MM_QUALITY_FIELDS``), finite numbers.

    Raises:
        ValidationError: a wrong type, unknown field, NaN/inf, out-of-range value or empty event.
    """
    settings = get_settings()
    clean = validate_event(name, version, values, fields(settings))
    when = time.time() if at is None else _check_time("at", at)
    r = r or store.connect()
    key = keys.quality_series(name, version)
    event = {"at": when, "id": uuid.uuid4().hex[:12], **clean}
    pipe = r.pipeline()
    pipe.zadd(key, {json.dumps(event): when})
    pipe.zremrangebyscore(key, "-inf", f"({time.time() - settings.quality_retention_s}")
    pipe.zremrangebyrank(key, 0, -(settings.quality_max_events + 1))
    pipe.sadd(keys.QUALITY_SERIES, f"{name}|{version}")
    pipe.execute()
    return {"name": name, "version": version, **event}


def events(name: str, version: str, start: float | datetime | None = None, end: float | datetime | None = None,
           r: redis.Redis | None = None) -> list[dict[str, Any]]:
    """Events of ``name``/``version`` with ``start <= at <= end``, oldest first."""
    _check_name("name", name)
    _check_name("version", version)
    low = "-inf" if start is None else _check_time("start", start)
    high = "+inf" if end is None else _check_time("end", end)
    if isinstance(low, float) and isinstance(high, float) and low > high:  # both given
        raise ValidationError("start", f"start ({low}) is after end ({high})")
    r = r or store.connect()
    return [json.loads(raw) for raw in replies.members(r.zrangebyscore(keys.quality_series(name, version), low, high))]


def summarize(events_: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """count/mean/min/max/p50/p95 per field over ``events_`` (pure)."""
    by_field: dict[str, list[float]] = {}
    for event in events_:
        for field, value in event.items():
            if field not in ("at", "id"):
                by_field.setdefault(field, []).append(float(value))
    return {
        field: {"count": len(vals), "mean": math.fsum(vals) / len(vals), "min": min(vals), "max": max(vals),
                "p50": percentile(vals, 50), "p95": percentile(vals, 95)}
        for field, vals in sorted(by_field.items())
    }


def metric_stats(name: str, version: str, start: float | datetime | None = None,
                 end: float | datetime | None = None, r: redis.Redis | None = None) -> dict[str, Any]:
    """Stats of ``name``/``version`` between ``start`` and ``end`` (epoch seconds or datetimes).

    Returns ``{"name", "version", "start", "end", "count", "fields": {field: {count, mean, min,
    max, p50, p95}}}``; a series with no events in range has count 0 and no fields.
    """
    found = events(name, version, start, end, r)
    start = None if start is None else _check_time("start", start)
    end = None if end is None else _check_time("end", end)
    return {"name": name, "version": version, "start": start, "end": end, "count": len(found),
            "fields": summarize(found)}


def series(r: redis.Redis) -> list[tuple[str, str]]:
    """Every (name, version) with events."""
    return sorted(tuple(replies.text(m).split("|", 1)) for m in r.smembers(keys.QUALITY_SERIES))  # type: ignore[misc]
