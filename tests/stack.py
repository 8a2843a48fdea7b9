"""A whole mm node for integration tests: gpu-broker(s) and model-workers as real Celery processes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mm import keys, store
from tests.procs import Proc, wait_for

REPO = Path(__file__).resolve().parent.parent


class Stack:
    """Starts and stops the Celery processes of one node against a given Redis and runtime."""

    def __init__(self, tmp_path: Path, redis_url: str, runtime_url: str, *, node: str = "n1",
                 memory_budget: int = 0, **settings: object):
        self.tmp = tmp_path
        self.node = node
        self.r = store.connect(redis_url)
        self.env = os.environ | {
            "MM_REDIS_URL": redis_url, "MM_RUNTIME_URL": runtime_url, "MM_NODE": node,
            "MM_MEMORY_BUDGET": str(memory_budget), "MM_USE_NVML": "0", "MM_HEARTBEAT_S": "0.3",
            "MM_MIN_RESIDENCY_S": "1", "MM_TICK_S": "0.1", "MM_UNLOAD_SETTLE_S": "2",
            "PYTHONPATH": str(REPO),
        } | {f"MM_{k.upper()}": str(v) for k, v in settings.items()}
        self.procs: dict[str, Proc] = {}
        self.runtime = None  # the runtime sim_node started for this stack, if it did

    def _celery(self, name: str, args: list[str], **env: str) -> Proc:
        cmd = [sys.executable, "-m", "celery", "-A", "mm.app", "worker", "-l", "INFO",
               "--without-gossip", "--without-mingle", "-n", f"{name}@{self.node}", *args]
        proc = Proc(cmd, log=self.tmp / f"{name}.log", env=self.env | env, cwd=str(REPO))
        self.procs[name] = proc
        return proc

    def start_broker(self, name: str = "broker") -> Proc:
        """A gpu-broker (node agent plus leader candidate) that also runs beat's jobs, as `mm up` starts it."""
        return self._celery(name, ["-Q", f"{keys.node_queue(self.node)},{keys.BEAT_QUEUE}", "-c", "1", "-P", "threads"])

    def start_worker(self, name: str = "worker", slots: int = 2) -> Proc:
        """A model-worker with ``slots`` threads and no model queue."""
        return self._celery(name, ["-P", "threads", "-c", str(slots)], MM_WORKER_SLOTS=str(slots))

    def hostname(self, name: str) -> str:
        return f"{name}@{self.node}"

    def node_state(self) -> dict | None:
        raw = self.r.get(keys.node_state(self.node))
        return json.loads(raw) if raw else None

    def resident(self) -> list[str]:
        state = self.node_state()
        return [m["model"] for m in state["resident"]] if state else []

    def wait_ready(self, models: list[str], workers: list[str], timeout: float = 60) -> None:
        """Until the node publishes state, the registry lists ``models`` and the workers report in."""
        wait_for(self.node_state, timeout, what=f"node {self.node} state ({self.logs()})")
        wait_for(lambda: all(self.r.hexists(keys.MODELS, m) for m in models), timeout, what="registry sync")
        wait_for(lambda: all(self.r.exists(keys.worker_state(self.hostname(w))) for w in workers), timeout,
                 what=f"workers {workers} to report")

    def logs(self) -> str:
        return "; ".join(f"{n}: {p.log_path}" for n, p in self.procs.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@contextmanager
def sim_node(tmp_path: Path, redis_url: str, models: list[dict[str, Any]], memory: int, *,
             workers: tuple[str, ...] = ("w1",), slots: int = 2, **settings: object) -> Iterator[Stack]:
    """An ``mm runtime`` (sim engine) serving ``models`` within ``memory`` bytes and a node on
    ``redis_url`` with that memory budget: its gpu-broker and ``workers`` started and reported in.

    Everything it started is stopped when the block ends, however it ends. ``settings`` are mm
    settings without the ``MM_`` prefix; the runtime is ``stack.runtime``.
    """
    from tests.runtime_server import start_runtime

    runtime = start_runtime(tmp_path, engine="sim", models=models, memory=memory,
                            env={f"MM_{k.upper()}": str(v) for k, v in settings.items()})
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=memory, **settings)
    stack.runtime = runtime
    try:
        stack.start_broker()
        for name in workers:
            stack.start_worker(name, slots=slots)
        stack.wait_ready([m["name"] for m in models if m.get("pulled", True)], list(workers))
        yield stack
    finally:
        stack.stop()
        runtime.stop()
