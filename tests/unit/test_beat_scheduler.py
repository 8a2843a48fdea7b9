"""Beat's scheduler installs mm's periodic jobs and keeps any an operator configured."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from mm.beat.schedule import INTERVAL_SETTINGS
from mm.beat.scheduler import SlotScheduler


def test_the_scheduler_runs_mm_jobs_and_an_operators_own_entries():
    app = Celery("operator", broker="memory://", set_as_current=False)
    app.conf.beat_schedule = {"nightly-report": {"task": "reports.nightly", "schedule": timedelta(hours=24)}}

    scheduler = SlotScheduler(app=app)

    tasks = {entry.task for entry in scheduler.schedule.values()}
    assert tasks >= set(INTERVAL_SETTINGS) | {"reports.nightly"}
