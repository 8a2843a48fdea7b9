"""What every bench shares: percentiles, tables, and the processes it starts (and always stops).

Processes come from the test helpers (``tests.procs``): each runs in its own process group and is
stopped by group, so nothing a bench starts outlives it, even on Ctrl-C or an exception.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import redis

from tests.procs import Proc, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
GB = 1_000_000_000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(parts: Sequence[str]) -> str:
        return "  ".join(p.ljust(w) if i == 0 else p.rjust(w)
                         for i, (p, w) in enumerate(zip(parts, widths, strict=False)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


class Services:
    """The processes of one bench run, in a private temp dir; ``stop()`` (or leaving ``with``) ends all.

    SIGTERM and SIGINT are turned into an exception so that the ``with`` block still cleans up.
    """

    def __init__(self, keep_logs: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="mm-bench-"))
        self.keep_logs = keep_logs
        self._stoppers: list[Any] = []
        self.redis_pids: list[int] = []

    def __enter__(self) -> Self:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _raise_interrupt)
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        self.stop(keep=self.keep_logs or exc_type is not None)

    def add(self, stopper: Any) -> Any:
        """Remember something with a ``stop()`` method; stopped in reverse order."""
        self._stoppers.append(stopper)
        return stopper

    def redis(self, appendonly: bool = True) -> str:
        """A private redis-server on a free port (AOF as in production unless told); its URL."""
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
        port = free_port()
        data = self.dir / f"redis-{port}"
        data.mkdir()
        proc = self.add(Proc([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
                              "--appendonly", "yes" if appendonly else "no"], log=data / "redis.log"))
        self.redis_pids.append(proc.pid)
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: proc.alive() and redis.Redis.from_url(url).ping(), timeout=20, what="redis-server")
        return url

    def runtime(self, models: list[dict[str, Any]], memory: int, evict: str = "none"):
        """``mm runtime`` (sim engine) serving ``models`` within ``memory`` bytes."""
        from tests.runtime_server import start_runtime

        return self.add(start_runtime(self.dir, engine="sim", models=models, memory=memory, evict=evict))

    def stack(self, redis_url: str, runtime_url: str, memory: int, **settings: Any):
        """An mm node (gpu-broker and model-workers started by the caller) on ``redis_url``."""
        from tests.stack import Stack

        return self.add(Stack(self.dir, redis_url, runtime_url, memory_budget=memory, **settings))

    def proc(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        return self.add(Proc(args, log=self.dir / f"{name}.log", env=env, cwd=str(REPO)))

    def stop(self, keep: bool = False) -> None:
        while self._stoppers:
            try:
                self._stoppers.pop().stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"warning: stopping a bench process failed: {exc!r}", file=sys.stderr)
        if keep:
            print(f"logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this one plus the repository on PYTHONPATH."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env
