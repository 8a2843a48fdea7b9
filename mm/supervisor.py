"""Starts and stops a set of child processes, each in its own process group with its own log."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path


class Supervisor:
    """Children started with :meth:`spawn` are all stopped by :meth:`stop_all` (TERM, then KILL)."""

    def __init__(self, run_dir: Path, env: dict[str, str]):
        self.run_dir = run_dir
        self.env = env
        self.children: list[Child] = []
        run_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, args: list[str]) -> Child:
        log = self.run_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

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
