"""Model activity: when each model was last used, which are active or idle, and which
resident ones beat's idle shutdown asks the leader to unload.

Every job records its model's last use (``HSET mm:activity model <epoch s>``); :func:`report`
does the same for the model monitor's ``POST /models/<name>/report``. These functions are what the CLI
(``mm models ...``) and a gateway serve.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from mm import events, keys, registry, replies
from mm.errors import UnknownModel
from mm.settings import Settings

log = logging.getLogger("mm.activity")


def _csv(text: str) -> frozenset[str]:
    return frozenset(m.strip() for m in text.split(",") if m.strip())


def warm_pool(settings: Settings) -> frozenset[str]:
    """Models never idle-unloaded (``MM_WARM_POOL``)."""
    return _csv(settings.warm_pool)


@dataclass
class ModelActivity:
    """One model's use and whereabouts."""

    model: str
    last_used: float | None  # epoch seconds of the last job or report (None: never)
    idle_s: float | None  # seconds since last_used
    active: bool  # used within the active window
    idle: bool  # not used within the idle threshold
    resident_on: list[str] = field(default_factory=list)
    size: int = 0  # bytes when resident (learned, else estimated)
    queued: int = 0
    in_flight: int = 0
    pinned: bool = False
    warm: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _str_map(raw: dict[bytes | str, bytes | str]) -> dict[str, float]:
    return {replies.text(k): float(v) for k, v in raw.items()}


def last_used(r: redis.Redis) -> dict[str, float]:
    """model -> epoch seconds of its last job or report."""
    return _str_map(r.hgetall(keys.ACTIVITY))


def report(r: redis.Redis, model: str, at: float | None = None) -> float:
    """Mark ``model`` used now (the model monitor's ``POST /models/<name>/report``); return the time.

    Raises :class:`~mm.errors.UnknownModel` if no runtime serves ``model``.
    """
    if not r.hexists(keys.MODELS, model):
        raise UnknownModel(model)
    at = time.time() if at is None else at
    r.hset(keys.ACTIVITY, model, at)
    return at


def activity(r: redis.Redis, settings: Settings, now: float | None = None) -> list[ModelActivity]:
    """Every registered (or recently used) model: last use, resident where, size, queue depth."""
    from mm.scheduling.reader import read_demand, read_records

    now = time.time() if now is None else now
    entries = registry.all_models(r)
    used = last_used(r)
    records = read_records(r)
    resident_on: dict[str, list[str]] = {}
    loaded_at: dict[str, float] = {}
    for node, state in sorted(records.nodes.items()):
        for m in state.get("resident", []):
            resident_on.setdefault(m["model"], []).append(node)
            loaded_at[m["model"]] = max(loaded_at.get(m["model"], 0.0), float(m.get("loaded_at") or 0.0))
    in_flight: dict[str, int] = {}
    for w in records.workers.values():
        for model, n in w.get("running", {}).items():
            in_flight[model] = in_flight.get(model, 0) + int(n)
    names = sorted(set(entries) | set(used) | set(resident_on))
    demand = read_demand(r, names, now)
    warm = warm_pool(settings)
    out = []
    for name in names:
        # A model loaded and never used since counts as used when it was loaded.
        last = max(used.get(name, 0.0), loaded_at.get(name, 0.0)) or None
        idle_s = None if last is None else max(0.0, now - last)
        entry = entries.get(name)
        out.append(ModelActivity(
            model=name, last_used=last, idle_s=idle_s,
            active=idle_s is not None and idle_s <= settings.active_window_s,
            idle=idle_s is None or idle_s > settings.idle_threshold_s,
            resident_on=resident_on.get(name, []), size=entry.size if entry else 0,
            queued=demand[name].total if name in demand else 0, in_flight=in_flight.get(name, 0),
            pinned=bool(entry and entry.pinned) or name in settings.pinned, warm=name in warm,
        ))
    return out


def active_models(r: redis.Redis, settings: Settings, now: float | None = None) -> list[ModelActivity]:
    """Models used within ``MM_ACTIVE_WINDOW_S``."""
    return [m for m in activity(r, settings, now) if m.active]


def idle_models(r: redis.Redis, settings: Settings, now: float | None = None) -> list[ModelActivity]:
    """Models not used within ``MM_IDLE_THRESHOLD_S`` (or never)."""
    return [m for m in activity(r, settings, now) if m.idle]


def keep_reason(m: ModelActivity) -> str | None:
    """Why idle shutdown must leave resident model ``m`` alone, or None if it may go (pure)."""
    if m.pinned:
        return "pinned"
    if m.warm:
        return "warm pool"
    if m.in_flight:
        return "jobs in flight"
    if m.queued:
        return "jobs queued"
    if not m.idle:
        return "used recently"
    return None


def idle_shutdown(r: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Ask the leader to unload every resident model idle past the threshold.

    The request goes through the broker's fenced path (``mm:unload:requests``); the leader
    re-checks residency, pins, in-flight and queued jobs before it unloads. Returns
    ``{"requested": ["node|model", ...], "kept": {"model": reason}}``.
    """
    requested, kept = [], {}
    for m in activity(r, settings, now):
        if not m.resident_on:
            continue
        reason = keep_reason(m)
        if reason:
            kept[m.model] = reason
            continue
        idle_for = "never used" if m.idle_s is None else f"idle {m.idle_s:.0f}s"
        for node in m.resident_on:
            r.hset(keys.UNLOAD_REQUESTS, f"{node}|{m.model}", f"idle shutdown: {idle_for}")
            requested.append(f"{node}|{m.model}")
            log.info("IDLE asking to unload %s on %s (%s)", m.model, node, idle_for)
    if requested:
        r.lpush(keys.WAKE, 1)  # the leader acts on its next tick
        events.emit(r, "idle_shutdown", requested=requested, kept=kept)
    return {"requested": requested, "kept": kept}


def activity_report(r: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Log and emit (event kind "activity") which models are active and which are idle."""
    models = activity(r, settings, now)
    summary = {
        "active": [m.model for m in models if m.active],
        "idle": [m.model for m in models if m.idle],
        "resident": {m.model: m.resident_on for m in models if m.resident_on},
        "active_window_s": settings.active_window_s,
        "idle_threshold_s": settings.idle_threshold_s,
    }
    log.info("ACTIVITY active %s; idle %s; resident %s", summary["active"] or "none", summary["idle"] or "none",
             summary["resident"] or "none")
    events.emit(r, "activity", **summary)
    return summary
