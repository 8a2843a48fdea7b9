"""Beat's periodic tasks. Their bodies run in the gpu-broker (it consumes ``mm.beat``).

Each run claims its schedule slot first (:mod:`mm.beat.singleton`), so a second beat process never
doubles a job. A message without a slot (sent by hand) runs unconditionally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task

from mm import activity, alerts, metrics, store
from mm.app import app
from mm.beat import schedule, singleton
from mm.settings import Settings
from mm.settings import get as get_settings

log = logging.getLogger("mm.beat")


def _once(task: Task[Any, Any], name: str, slot: int | None,
          body: Callable[[redis.Redis, Settings], dict[str, Any]]) -> dict[str, Any]:
    r = store.connect()
    settings = get_settings()
    host = task.request.hostname or ""
    if slot is not None and not singleton.claim(r, name, slot, 2 * schedule.interval(name) + 60, host):
        singleton.record_skip(r, name)
        log.info("BEAT %s slot %s already run by another beat's message; skipped", name, slot)
        return {"skipped": True, "slot": slot}
    started = time.monotonic()
    result = body(r, settings)
    singleton.record_run(r, name, slot, host, time.monotonic() - started)
    return {"skipped": False, "slot": slot, **result}


@app.task(name=schedule.IDLE_SHUTDOWN, bind=True, acks_late=False)
def idle_shutdown(self: Task[Any, Any], slot: int | None = None) -> dict[str, Any]:
    """Ask the leader to unload resident models idle past ``MM_IDLE_THRESHOLD_S``."""
    return _once(self, schedule.IDLE_SHUTDOWN, slot, activity.idle_shutdown)


@app.task(name=schedule.ROLLUP, bind=True, acks_late=False)
def rollup(self: Task[Any, Any], slot: int | None = None) -> dict[str, Any]:
    """Roll raw job samples up per model, minute and hour; trim past retention."""
    return _once(self, schedule.ROLLUP, slot, metrics.rollup)


@app.task(name=schedule.ALERTS, bind=True, acks_late=False)
def evaluate_alerts(self: Task[Any, Any], slot: int | None = None) -> dict[str, Any]:
    """Evaluate ``MM_ALERT_RULES``: fire and clear alerts."""
    return _once(self, schedule.ALERTS, slot, lambda r, s: {"transitions": alerts.evaluate(r, s)})


@app.task(name=schedule.ACTIVITY_REPORT, bind=True, acks_late=False)
def activity_report(self: Task[Any, Any], slot: int | None = None) -> dict[str, Any]:
    """Log and emit which models are active and which idle."""
    return _once(self, schedule.ACTIVITY_REPORT, slot, activity.activity_report)
