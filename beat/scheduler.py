"""The beat scheduler: Celery's in-memory scheduler that stamps each periodic message with its slot."""

from __future__ import annotations

import time
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.result import AsyncResult
from kombu import Producer

from mm.beat.schedule import aligned, build, slot_of


class SlotScheduler(Scheduler):
    """Runs mm's periodic jobs, each due entry sent with ``slot=<grid cell>`` so that the task runs
    once per slot across beats.

    No schedule file: the schedule is aligned to the wall clock, so a restarted beat loses nothing
    by not remembering its last runs.
    """

    def setup_schedule(self) -> None:
        super().setup_schedule()  # Celery's default entries
        # merge_inplace drops what it is not given: give it an operator's beat_schedule too.
        schedule = {**self.app.conf.beat_schedule, **build()}
        self.merge_inplace(schedule)  # beat_schedule's dicts, as Celery takes them

    def apply_async(self, entry: ScheduleEntry, producer: Producer | None = None, advance: bool = True,
                    **kwargs: Any) -> AsyncResult[Any]:
        if isinstance(entry.schedule, aligned):  # mm's own entries; an operator's run as Celery sends them
            slot = slot_of(time.time(), entry.schedule.seconds)
            entry.kwargs = {**(entry.kwargs or {}), "slot": slot}  # Celery makes None {}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
