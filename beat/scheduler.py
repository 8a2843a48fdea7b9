"""The beat scheduler: Celery's in-memory scheduler that stamps each periodic message with its slot."""

from __future__ import annotations

import time

from celery.beat import Scheduler

from mm.beat.schedule import slot_of


class SlotScheduler(Scheduler):
    """Sends each due entry with ``slot=<grid cell>`` so the task runs once per slot across beats.

    No schedule file: the schedule is aligned to the wall clock, so a restarted beat loses nothing
    by not remembering its last runs.
    """

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        seconds = entry.schedule.seconds
        entry.kwargs = {**entry.kwargs, "slot": slot_of(time.time(), seconds)}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
