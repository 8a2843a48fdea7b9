"""The chaos loop: every few seconds a fault picked at random (seeded), on the live cluster.

Kinds come in shuffled rounds, so a short run still meets each of them; the node drop happens once,
at a random point in the middle half of the run. Killed processes are started again by the
cluster's supervisor, not here (Redis excepted: its restart is the fault).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.chaos_cluster import Cluster

KINDS = ("kill_worker", "kill_leader", "stop_leader", "kill_runtime", "restart_redis", "restart_gateway",
         "restart_beat")
STOP_PAST_LEASE_S = 1.5  # a SIGSTOPped leader stays stopped this long past its lease TTL
REDIS_DOWN_S = (0.2, 3.0)  # how long a killed redis-server stays down before it is started again


@dataclass
class Fault:
    kind: str
    at: float  # wall clock when it was injected
    target: str
    until: float = 0.0  # when its effect ended (SIGCONT); ``at`` for instant faults


@dataclass
class Chaos:
    """Injects faults into ``cluster`` from ``rng`` every ``every`` (low, high) seconds until stopped."""

    cluster: Cluster
    rng: random.Random
    every: tuple[float, float]
    lease_ttl_s: float
    drop_at: float  # monotonic time after which the one node drop happens
    kinds: tuple[str, ...] = KINDS  # the kinds drawn (drop_node comes once regardless, if it is among them)
    faults: list[Fault] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    _bag: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _dropped: bool = False

    def run(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            kind = self._next_kind()
            try:
                fault = self.inject(kind)
            except Exception as exc:  # noqa: BLE001 - a fault that cannot be done now (no leader) is skipped
                print(f"chaos: {kind} failed: {exc!r}")
                fault = None
            if fault is None:  # tried again later in this round (no leader now, say)
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                if kind != "drop_node":
                    self._bag.insert(0, kind)
            else:
                self.faults.append(fault)
                print(f"chaos: {time.strftime('%H:%M:%S')} {fault.kind} {fault.target}", flush=True)

    def stop(self) -> None:
        self._stop.set()

    def _next_kind(self) -> str:
        if not self._dropped and time.monotonic() >= self.drop_at:
            return "drop_node"
        if not self._bag:
            self._bag = list(self.kinds)
            self.rng.shuffle(self._bag)
        return self._bag.pop()

    def inject(self, kind: str) -> Fault | None:
        actions: dict[str, Callable[[], Fault | None]] = {
            "kill_worker": self.kill_worker, "kill_leader": self.kill_leader, "stop_leader": self.stop_leader,
            "kill_runtime": self.kill_runtime, "restart_redis": self.restart_redis,
            "restart_gateway": self.restart_gateway, "restart_beat": self.restart_beat, "drop_node": self.drop_node,
        }
        return actions[kind]()

    def kill_worker(self) -> Fault | None:
        with self.cluster._lock:
            node = self.rng.choice(self.cluster.live_nodes())
            name = self.rng.choice(sorted(n for n in node.stack.procs if n != "broker"))
            node.stack.procs[name].signal(signal.SIGKILL)
        return Fault("kill_worker", time.time(), f"{name}@{node.name}")

    def kill_leader(self) -> Fault | None:
        with self.cluster._lock:
            found = self.cluster.leader()
            if found is None:
                return None
            node, proc = found
            proc.signal(signal.SIGKILL)
        return Fault("kill_leader", time.time(), f"broker@{node.name}")

    def stop_leader(self) -> Fault | None:
        found = self.cluster.leader()
        if found is None:
            return None
        node, proc = found
        at = time.time()
        proc.signal(signal.SIGSTOP)
        try:
            self._stop.wait(self.lease_ttl_s + STOP_PAST_LEASE_S)
        finally:
            proc.signal(signal.SIGCONT)
        return Fault("stop_leader", at, f"broker@{node.name}", until=time.time())

    def kill_runtime(self) -> Fault | None:
        with self.cluster._lock:
            node = self.rng.choice(self.cluster.live_nodes())
            node.runtime.proc.signal(signal.SIGKILL)
        return Fault("kill_runtime", time.time(), f"runtime@{node.name}")

    def restart_redis(self) -> Fault | None:
        """SIGKILL redis-server and start it again on its port and data dir (AOF reload) after a
        random outage, as a supervisor would."""
        at = time.time()
        self.cluster.redis.stop()
        self._stop.wait(self.rng.uniform(*REDIS_DOWN_S))
        self.cluster.redis.start()
        return Fault("restart_redis", at, "redis", until=time.time())

    def restart_gateway(self) -> Fault | None:
        with self.cluster._lock:
            if self.cluster.gateway is not None:
                self.cluster.gateway.signal(signal.SIGKILL)
        return Fault("restart_gateway", time.time(), "gateway")

    def restart_beat(self) -> Fault | None:
        with self.cluster._lock:
            if self.cluster.beat is not None:
                self.cluster.beat.signal(signal.SIGKILL)
        return Fault("restart_beat", time.time(), "beat")

    def drop_node(self) -> Fault | None:
        """One node gone for good, as a host that died: its broker, workers and runtime SIGKILLed."""
        self._dropped = True
        with self.cluster._lock:
            live = self.cluster.live_nodes()
            if len(live) < 2:
                return None
            node = self.rng.choice(live)
            node.dropped = True
            for proc in node.stack.procs.values():
                proc.signal(signal.SIGKILL)
            node.runtime.proc.signal(signal.SIGKILL)
        return Fault("drop_node", time.time(), node.name)
