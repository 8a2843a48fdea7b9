"""Starts and stops a set of child processes, each in its own process group with its own log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_RESTARTS_PER_MINUTE = 5  # a child exiting faster than this is left down: something is wrong


@dataclass
class Child:
    name: str
    args: list[str]
    popen: subprocess.Popen
    log: Path
    restart: bool = False  # started again when it exits (Celery's own processes)
    restarts: list[float] = field(default_factory=list)  # monotonic times of its restarts


class Supervisor:
    """Children started with :meth:`spawn` are all stopped by :meth:`stop_all` (TERM, then KILL)."""

    def __init__(self, run_dir: Path, env: dict[str, str]):
        self.run_dir = run_dir
        self.env = env
        self.children: list[Child] = []
        run_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, args: list[str], restart: bool = False) -> Child:
        """Start ``args`` as ``name``; with ``restart``, :meth:`revive` starts it again when it exits."""
        log = self.run_dir / f"{name}.log"
        child = Child(name, args, self._popen(args, log), log, restart)
        self.children.append(child)
        return child

    def _popen(self, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, stdin=subprocess.DEVNULL)

    def revive(self) -> list[tuple[Child, int]]:
        """Start again the restartable children that exited, each at most MAX_RESTARTS_PER_MINUTE
        times a minute; return them with the code they exited with. The others stay in :meth:`dead`."""
        revived = []
        now = time.monotonic()
        for child in self.dead():
            child.restarts = [t for t in child.restarts if now - t < 60]
            if child.restart and len(child.restarts) < MAX_RESTARTS_PER_MINUTE:
                child.restarts.append(now)
                code = child.popen.returncode
                child.popen = self._popen(child.args, child.log)
                revived.append((child, code))
        return revived

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.popen.poll() is not None]

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop children in reverse start order, so workers hand back jobs while Redis still runs."""
        for child in reversed(self.children):
            _signal(child, signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(child, signal.SIGKILL)
                child.popen.wait(5)

def _signal(child: Child, sig: int) -> None:
    try:
        os.killpg(child.popen.pid, sig)
    except ProcessLookupError:
        pass
