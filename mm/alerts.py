"""Alerts: beat evaluates ``MM_ALERT_RULES`` over the trailing window; firing and clearing are told.

A firing alert writes one ``ALERT ...`` log line (``ALERT prediction_accuracy lower than 0.3, {...}``),
an entry in the stream ``mm:alerts`` and in the event stream, and POSTs JSON to ``MM_ALERT_WEBHOOK``
when set. It clears, the same three ways, once its condition no longer holds (or its subject has no data).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from mm import events, keys, metrics, quality, registry, replies
from mm.alert_rules import JOB_METRICS, Rule, advance, parse_rules
from mm.rollup import summarize
from mm.settings import Settings

log = logging.getLogger("mm.alerts")

MAX_ALERTS = 10_000


def rules(settings: Settings) -> list[Rule]:
    """The configured rules; a bad ``MM_ALERT_RULES`` raises ValidationError."""
    return parse_rules(settings.alert_rules, quality.fields(settings))


def _job_figures(r: redis.Redis, settings: Settings, at: float) -> dict[str, dict[str, Any]]:
    """Per model: every job metric over the window (only models with samples, loads or a queue)."""
    from mm.scheduling.reader import read_demand

    start = at - settings.alert_window_s
    by_model: dict[str, list[dict[str, Any]]] = {}
    for sample in metrics.raw_samples(r, start, at + 0.001):
        by_model.setdefault(sample["model"], []).append(sample)
    moves: dict[str, dict[str, int]] = {}
    for (_minute, model), move in metrics.load_counts(r, start, at + 0.001).items():
        total = moves.setdefault(model, {"load": 0, "unload": 0})
        total["load"] += move["load"]
        total["unload"] += move["unload"]
    figures = {}
    for model in set(by_model) | set(moves):
        move = moves.get(model, {"load": 0, "unload": 0})
        fig = summarize(by_model.get(model, []), move["load"], move["unload"])
        fig["jobs"] = fig.pop("count")
        if not fig["jobs"]:  # no jobs: only loads and unloads mean something
            fig = {"loads": fig["loads"], "unloads": fig["unloads"]}
        figures[model] = fig
    for model, demand in read_demand(r, sorted(registry.names(r)), at).items():
        figures.setdefault(model, {})["queue_depth"] = demand.total
    return figures


def _quality_figures(r: redis.Redis, settings: Settings, at: float) -> dict[tuple[str, str], dict[str, Any]]:
    figures = {}
    for name, version in quality.series(r):
        stats = quality.summarize(quality.events(name, version, at - settings.alert_window_s, at, r=r))
        if stats:
            figures[(name, version)] = {f: s["mean"] for f, s in stats.items()} | {
                "events": max(s["count"] for s in stats.values())}
    return figures


def _subjects(rule: Rule, jobs: dict, quality_: dict) -> dict[str, tuple[dict[str, Any], float]]:
    """subject key -> (subject, value) for every subject the rule's metric has a value for."""
    found = {}
    if rule.metric in JOB_METRICS:
        for model, fig in jobs.items():
            if rule.metric in fig:
                found[f"model={model}"] = ({"model": model}, float(fig[rule.metric]))
    else:
        for (name, version), fig in quality_.items():
            if rule.metric in fig:
                found[f"name={name},version={version}"] = ({"name": name, "version": version}, fig[rule.metric])
    return found


def evaluate(r: redis.Redis, settings: Settings, at: float | None = None) -> list[dict[str, Any]]:
    """Evaluate every rule for every subject; fire and clear alerts; return the transitions."""
    at = metrics.now(r) if at is None else at
    configured = rules(settings)
    jobs = _job_figures(r, settings, at)
    quality_ = _quality_figures(r, settings, at)
    states = {replies.text(k): json.loads(v) for k, v in r.hgetall(keys.ALERT_STATE).items()}
    transitions = []
    seen = set()
    for rule in configured:
        for subject_key, (subject, value) in _subjects(rule, jobs, quality_).items():
            state_key = f"{rule.id}|{subject_key}"
            seen.add(state_key)
            previous = states.get(state_key)
            state, change = advance(previous, rule.holds(value), at, rule.for_s)
            if state is None:
                r.hdel(keys.ALERT_STATE, state_key)
            else:
                r.hset(keys.ALERT_STATE, state_key, json.dumps(
                    state | {"rule": rule.id, "text": rule.describe(), "subject": subject, "value": value}))
            if change:
                transitions.append(_tell(r, settings, change, rule.id, rule.describe(), subject, rule.metric, value,
                                         at, _context(rule, subject, jobs, quality_)))
    # Alerts whose subject has no data in the window any more, or whose rule was removed: ended.
    for state_key, state in states.items():
        if state_key in seen:
            continue
        r.hdel(keys.ALERT_STATE, state_key)
        if state["state"] == "firing":
            metric = state["rule"].split()[0]
            transitions.append(_tell(r, settings, "cleared", state["rule"], state["text"], state["subject"], metric,
                                     None, at, {"reason": "no data in the window"}))
    return transitions


def _context(rule: Rule, subject: dict[str, Any], jobs: dict, quality_: dict) -> dict[str, Any]:
    if "model" in subject:
        fig = jobs.get(subject["model"], {})
        return {k: fig[k] for k in ("jobs", "errors", "queue_depth") if k in fig}
    return {"events": quality_.get((subject["name"], subject["version"]), {}).get("events", 0)}


def _tell(r: redis.Redis, settings: Settings, change: str, rule_id: str, text: str, subject: dict[str, Any],
          metric: str, value: float | None, at: float, context: dict[str, Any]) -> dict[str, Any]:
    alert = {"state": change, "rule": rule_id, "at": at, "subject": subject, "metric": metric, "value": value,
             "window_s": settings.alert_window_s, **context}
    details = {**subject, metric: value, **context, "window_s": settings.alert_window_s}
    if change == "firing":
        log.warning("ALERT %s, %s", text, details)
    else:
        log.warning("ALERT CLEARED %s, %s", text, details)
    try:
        r.xadd(keys.ALERTS, {"alert": json.dumps(alert)}, maxlen=MAX_ALERTS, approximate=True)
    except redis.RedisError as exc:
        log.warning("alert not stored: %s", exc)
    events.emit(r, "alert", **{k: v for k, v in alert.items() if k != "at"}, model=subject.get("model"))
    if settings.alert_webhook:
        post_webhook(settings.alert_webhook, alert | {"text": text}, settings.alert_webhook_timeout_s)
    return alert


def post_webhook(url: str, payload: dict[str, Any], timeout: float) -> bool:
    """POST ``payload`` as JSON; a failure is logged, never raised. Returns whether it was accepted."""
    import httpx  # the [server] extra's: `mm alerts` reads alerts on a client install without it

    try:
        response = httpx.post(url, json=payload, timeout=timeout)
        response.raise_for_status()
        return True
    except httpx.HTTPError as exc:
        log.warning("alert webhook %s failed: %s", url, exc)
        return False


def firing(r: redis.Redis) -> list[dict[str, Any]]:
    """Alerts firing now, oldest first."""
    states = [json.loads(v) for v in r.hvals(keys.ALERT_STATE)]
    return sorted((s for s in states if s["state"] == "firing"), key=lambda s: s["fired_at"])


def pending(r: redis.Redis) -> list[dict[str, Any]]:
    """Conditions holding but not yet for their rule's ``for`` duration."""
    states = [json.loads(v) for v in r.hvals(keys.ALERT_STATE)]
    return sorted((s for s in states if s["state"] == "pending"), key=lambda s: s["since"])


def recent(r: redis.Redis, count: int = 20) -> list[dict[str, Any]]:
    """The newest alert transitions (firing and cleared), newest first."""
    return [json.loads(data[b"alert"]) for _id, data in replies.entries(r.xrevrange(keys.ALERTS, count=count))]
