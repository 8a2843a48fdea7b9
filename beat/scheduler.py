"""The beat scheduler: Celery's in-memory scheduler that stamps each periodic message with its slot."""

from __future__ import annotations

import time

from celery.beat import Scheduler

from mm.beat.schedule import build, slot_of


class SlotScheduler(Scheduler):
    """Runs mm's periodic jobs, each due entry sent with ``slot=<grid cell>`` so that the task runs
    once per slot across beats.

    No schedule file: the schedule is aligned to the wall clock, so a restarted beat loses nothing
    by not remembering its last runs.
    """

    def setup_schedule(self) -> None:
        super().setup_schedule()  # Celery's defaults and any beat_schedule an operator configured
        self.merge_inplace(build())

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        seconds = entry.schedule.seconds
        entry.kwargs = {**entry.kwargs, "slot": slot_of(time.time(), seconds)}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
