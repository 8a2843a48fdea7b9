"""A background thread that does one thing every heartbeat until it is stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Heartbeat:
    """Calls ``beat`` every ``every_s`` seconds in a daemon thread, from :meth:`start` to :meth:`stop`.

    A beat that raises is logged as ``failed`` on ``log`` and never ends the thread: the next one
    comes on time.
    """

    def __init__(self, name: str, every_s: float, beat: Callable[[], None], log: logging.Logger, failed: str):
        self.name = name
        self.every_s = every_s
        self._beat = beat
        self._log = log
        self._failed = failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating, waiting up to 5 s for a beat in progress to end."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
            except Exception:
                self._log.exception(self._failed)
            self._stop.wait(self.every_s)
