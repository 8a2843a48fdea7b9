"""Beat's schedule: which periodic task runs how often, on a wall-clock grid shared by every beat.

The beat scheduler (:mod:`mm.beat.scheduler`) installs :func:`build`'s entries. Intervals come
from settings (``MM_IDLE_CHECK_S``, ``MM_METRICS_ROLLUP_S``, ``MM_ALERT_CHECK_S``,
``MM_ACTIVITY_REPORT_S``). Tasks go to the queue ``mm.beat``, which the gpu-broker consumes.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule

from mm import keys
from mm.settings import Settings
from mm.settings import get as get_settings

IDLE_SHUTDOWN = "mm.beat.idle_shutdown"
ROLLUP = "mm.beat.rollup"
ALERTS = "mm.beat.alerts"
ACTIVITY_REPORT = "mm.beat.activity_report"

# task -> the setting holding its interval in seconds.
INTERVAL_SETTINGS = {
    IDLE_SHUTDOWN: "idle_check_s",
    ROLLUP: "metrics_rollup_s",
    ALERTS: "alert_check_s",
    ACTIVITY_REPORT: "activity_report_s",
}


def interval(task: str) -> float:
    """Seconds between runs of periodic ``task``."""
    return float(getattr(get_settings(), INTERVAL_SETTINGS[task]))


def slot_of(ts: float, seconds: float) -> int:
    """The schedule slot (grid cell) holding ``ts``: the same number in every beat process."""
    return math.floor(ts / seconds)


class aligned(schedule):
    """Every ``run_every`` on the epoch grid (t = k x interval), not relative to the process start.

    Two beats started at different times therefore send each task for the same slot k, which the
    task claims once (see :mod:`mm.beat.singleton`).
    """

    def _next_boundary(self, now: float) -> float:
        return (slot_of(now, self.seconds) + 1) * self.seconds

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        now = time.time()
        last = self.maybe_make_aware(last_run_at).timestamp()
        if slot_of(now, self.seconds) > slot_of(last, self.seconds):
            return timedelta(0)
        return timedelta(seconds=self._next_boundary(now) - now)

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = time.time()
        last = self.maybe_make_aware(last_run_at).timestamp()
        due = slot_of(now, self.seconds) > slot_of(last, self.seconds)
        return schedstate(is_due=due, next=max(self._next_boundary(now) - now, 0.001))

    def __repr__(self) -> str:
        return f"<aligned every {self.seconds:g}s>"


def build(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` for ``settings`` (default: the process's)."""
    settings = settings or get_settings()
    entries: dict[str, dict[str, Any]] = {}
    for task, attr in INTERVAL_SETTINGS.items():
        seconds = float(getattr(settings, attr))
        if not seconds > 0:
            raise ValueError(f"MM_{attr.upper()} must be a positive number of seconds, not {seconds}")
        entries[task.rsplit(".", 1)[1].replace("_", "-")] = {
            "task": task,
            "schedule": aligned(timedelta(seconds=seconds)),
            # A run delayed past the next one is pointless: the next one does the same work.
            "options": {"queue": keys.BEAT_QUEUE, "expires": seconds},
        }
    return entries

