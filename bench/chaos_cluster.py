"""The chaos soak's cluster: two nodes, beat, the gateway and Redis, kept up as a supervisor would.

Every process is a real child in its own process group (``tests.procs.Proc``). A supervisor thread
starts again, every half second, whatever died (except a node dropped for good), so a fault is
only ever a SIGKILL, a SIGSTOP or a restart: the recovery is mm's and the supervisor's.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import redis

from tests.procs import Proc, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
GB = 1_000_000_000
NODE_MEMORY = int(2.8 * GB)  # each node fits two of the smaller models, never c with d
MODELS = [
    {"name": name, "engine": "sim", "size": int(size * GB), "load_bandwidth": 4 * GB, "prompt_rate": 20_000,
     "eval_rate": 150, "parallel": 2}
    for name, size in (("chaos-a:1b", 1.0), ("chaos-b:1b", 1.0), ("chaos-c:1b", 1.2), ("chaos-d:1b", 1.4))
]
# mm settings of every process: fast heartbeats and ticks, a 2 s lease, exact model sizes (so a load
# the runtime refuses for memory is one the scheduler wrongly thought would fit).
SETTINGS = {"heartbeat_s": 0.3, "tick_s": 0.1, "min_residency_s": 1, "unload_settle_s": 2,
            "lease_ttl_ms": 2000, "orphan_grace_s": 3, "size_multiplier": 1.0, "use_nvml": 0}
WORKERS = ("w1", "w2")
SLOTS = 2


class RedisControl(Protocol):
    """A redis-server the soak may SIGKILL (``stop``) and start again on the same port and data dir."""

    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class PrivateRedis:
    """A redis-server of the soak's own: AOF on, ``appendfsync`` as asked, same port and dir on restart."""

    def __init__(self, data: Path, appendfsync: str = "everysec"):
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
        self.binary, self.data, self.appendfsync = binary, data, appendfsync
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        data.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        self.proc = Proc([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
                          "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync],
                         log=self.data / "redis.log")
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), timeout=60, what="redis-server to answer PING")

    def stop(self) -> None:
        """SIGKILL: what the AOF holds is reloaded by the next start."""
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.stop()


@dataclass
class Node:
    """One GPU host: its runtime (fixed port) and its gpu-broker and model-workers."""

    name: str
    dir: Path
    port: int
    env: dict[str, str]
    runtime: Any = None  # tests.runtime_server.RuntimeProc
    stack: Any = None  # tests.stack.Stack
    dropped: bool = False

    @property
    def runtime_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def runtime_logs(self) -> list[Path]:
        return sorted(self.dir.glob("runtime-*.log"))


@dataclass
class Cluster:
    """The whole stack of the soak; ``start()`` brings it up, ``stop()`` ends every process."""

    dir: Path
    redis: RedisControl
    nodes: list[Node] = field(default_factory=list)
    beat: Proc | None = None
    gateway: Proc | None = None
    gateway_port: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def env(self) -> dict[str, str]:
        """The environment of the processes not tied to a node (beat, gateway): node n1's."""
        return dict(self.nodes[0].stack.env)

    # --- starting -----------------------------------------------------------------------
    def start(self, node_names: tuple[str, ...] = ("n1", "n2")) -> None:
        from tests.stack import Stack

        for name in node_names:
            ndir = self.dir / name
            ndir.mkdir(parents=True, exist_ok=True)
            node = Node(name, ndir, free_port(), {})
            node.stack = Stack(ndir, self.redis.url, node.runtime_url, node=name, memory_budget=NODE_MEMORY,
                               **SETTINGS)
            self.nodes.append(node)
            self._start_runtime(node)
            node.stack.start_broker()
            for worker in WORKERS:
                node.stack.start_worker(worker, slots=SLOTS)
        for node in self.nodes:
            node.stack.wait_ready([m["name"] for m in MODELS], list(WORKERS), timeout=120)
        self._start_beat()
        self.gateway_port = free_port()
        self._start_gateway()
        self._thread = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def _start_runtime(self, node: Node) -> None:
        from tests.runtime_server import start_runtime

        node.runtime = start_runtime(node.dir, engine="sim", models=MODELS, memory=NODE_MEMORY, port=node.port)

    def _start_beat(self) -> None:
        self.beat = Proc([sys.executable, "-m", "celery", "-A", "mm.app", "beat", "-l", "INFO"],
                         log=self.dir / "beat.log", env=self.env(), cwd=str(REPO))

    def _start_gateway(self) -> None:
        env = self.env() | {"PYTHONUNBUFFERED": "1"}
        proc = Proc([sys.executable, "-c", "from mm.cli import main; main()", "gateway", "--port",
                     str(self.gateway_port)], log=self.dir / "gateway.log", env=env, cwd=str(REPO))
        self.gateway = proc
        wait_for(lambda: not proc.alive() or httpx.get(f"{self.gateway_url}/api/health", timeout=2).status_code == 200,
                 60, what="the gateway")

    # --- supervising --------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.revive()
            except Exception as exc:  # noqa: BLE001 - a restart racing Redis or a port: try again next round
                print(f"supervisor: {exc!r}", file=sys.stderr)

    def _count(self, what: str) -> None:
        self.restarts[what] = self.restarts.get(what, 0) + 1

    def revive(self) -> None:
        """Start again every process that is not running, as compose or systemd would."""
        with self._lock:
            for node in self.nodes:
                if node.dropped:
                    continue
                if not node.runtime.alive():
                    node.runtime.stop()
                    self._start_runtime(node)
                    self._count("runtime")
                for name, proc in list(node.stack.procs.items()):
                    if not proc.alive():
                        proc.stop()
                        if name == "broker":
                            node.stack.start_broker()
                        else:
                            node.stack.start_worker(name, slots=SLOTS)
                        self._count("gpu-broker" if name == "broker" else "model-worker")
            if self.beat is not None and not self.beat.alive():
                self.beat.stop()
                self._start_beat()
                self._count("beat")
            if self.gateway is not None and not self.gateway.alive():
                self.gateway.stop()
                self._start_gateway()
                self._count("gateway")

    def stop(self) -> None:
        """Stop the supervisor, then every process (the dropped node's are gone already)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)
        with self._lock:
            for proc in (self.gateway, self.beat):
                if proc is not None:
                    proc.stop()
            for node in self.nodes:
                if node.stack is not None:
                    node.stack.stop()
                if node.runtime is not None:
                    node.runtime.stop()

    # --- what the faults act on ---------------------------------------------------------
    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if not n.dropped]

    def leader(self) -> tuple[Node, Proc] | None:
        """The node and process of the gpu-broker holding the lease (its value is ``<hostname>:<pid>``)."""
        try:
            owner = redis.Redis.from_url(self.redis.url, socket_timeout=2).get("mm:lock:broker")
        except redis.RedisError:
            return None
        if not owner:
            return None
        hostname, _, pid = owner.decode().rpartition(":")
        for node in self.live_nodes():
            proc = node.stack.procs.get("broker")
            if proc is not None and hostname == node.stack.hostname("broker") and str(proc.pid) == pid:
                return node, proc
        return None
