"""Noticing that a running job was cancelled: one thread per worker process reads the cancel
markers of the jobs running here, in one MGET every ``POLL_S`` (none while nothing runs).

A job's thread registers it with :func:`watch` and gets an event; the runtime call checks that
event between two chunks, so a cancel costs the token loop one attribute read, never a round trip.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from mm import keys, store

log = logging.getLogger("mm.worker")

POLL_S = 0.2
WARN_EVERY_S = 30.0


class CancelWatch:
    """The jobs running in this process and, for each, an event set once its cancel marker exists."""

    def __init__(self, r: redis.Redis, every_s: float = POLL_S) -> None:
        self.r = r
        self.every_s = every_s
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned_at = 0.0

    def watch(self, job_id: str) -> threading.Event:
        """Start watching ``job_id``; the event is set once it is cancelled."""
        with self._lock:
            event = self._events.setdefault(job_id, threading.Event())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mm-cancel-watch", daemon=True)
                self._thread.start()
        return event

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._events.pop(job_id, None)

    def poll(self) -> None:
        """One look at the markers of the jobs watched now."""
        with self._lock:
            watched = list(self._events.items())
        if not watched:
            return
        markers = self.r.mget([keys.cancel(job_id) for job_id, _ in watched])
        for (job_id, event), marker in zip(watched, markers, strict=True):
            if marker is not None and not event.is_set():
                log.info("job %s: cancelled while running; stopping it", job_id)
                event.set()

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except redis.RedisError as exc:  # Redis restarting: running jobs go on meanwhile
                if time.monotonic() - self._warned_at > WARN_EVERY_S:
                    self._warned_at = time.monotonic()
                    log.warning("cancel watch: Redis unavailable: %s", exc)
            time.sleep(self.every_s)


_watch: CancelWatch | None = None
_watch_lock = threading.Lock()


def watcher() -> CancelWatch:
    """This process's watch (made on first use)."""
    global _watch
    with _watch_lock:
        if _watch is None:
            _watch = CancelWatch(store.connect())
        return _watch
