"""The node agent: one per GPU host, inside the gpu-broker worker. It always runs.

It publishes the node's state (memory, resident models, operations) every heartbeat with a TTL,
syncs the registry from the runtime's ``/api/tags``, and carries out the leader's fenced load,
unload and pull commands against the runtime.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ollama
import redis

from mm import events, keys, node_problems, registry
from mm.errors import StaleToken
from mm.lease import check_fence
from mm.memory import BudgetMonitor, MemoryMonitor
from mm.scheduling.reader import read_records
from mm.settings import Settings
from mm.workers.heartbeat import Heartbeat

log = logging.getLogger("mm.node")

TAGS_SYNC_EVERY_S = 5.0
DRAIN_WAIT_S = 60.0  # an unload waits this long for jobs that started on the model to finish
OOM_GROWTH = 1.25  # size factor learned from an out-of-memory load that names no size


def _expires_ts(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def _waited(decided_at: float | None) -> float | None:
    """Seconds from the leader's decision to now: the control plane's delay on one command."""
    return None if decided_at is None else round(max(0.0, time.time() - float(decided_at)), 4)


class NodeAgent:
    """Publishes one node's state and executes fenced commands on its runtime."""

    def __init__(self, settings: Settings, r: redis.Redis, monitor: MemoryMonitor) -> None:
        self.settings = settings
        self.node = settings.node
        self.host = socket.gethostname()  # with the runtime URL, tells this node from another under the same name
        self.r = r
        self.monitor = monitor
        self.runtime = ollama.Client(host=settings.runtime_url, timeout=settings.runtime_timeout_s)
        self._lock = threading.Lock()
        self.loaded: dict[str, dict[str, float]] = {}  # model -> {loaded_at, load_s}
        self.ops: dict[str, dict[str, Any]] = {}  # model -> the last operation on it
        self._last_sync = 0.0
        self.models_listed: int | None = None  # models in the runtime's /api/tags at the last sync
        self.memory_warning = ""  # set when a load shows MM_MEMORY_BUDGET larger than the runtime holds
        self._shown: dict[tuple[str, str], dict[str, Any]] = {}  # (model, digest) -> facts from /api/show
        self._heartbeat = Heartbeat("mm-node-agent", settings.heartbeat_s, self._beat, log, "node state publish failed")

    # --- state -------------------------------------------------------------------------
    def resident(self) -> list[dict[str, Any]]:
        """Models the runtime holds now, from ``/api/ps``."""
        models = []
        for m in self.runtime.ps().models:
            loaded = self.loaded.get(m.model or "", {})
            models.append({
                "model": m.model, "size": int(m.size or 0), "size_vram": int(m.size_vram or 0),
                "digest": m.digest, "expires_at": _expires_ts(m.expires_at),
                "loaded_at": loaded.get("loaded_at", 0.0), "load_s": loaded.get("load_s", 0.0),
            })
        return models

    def publish(self) -> dict[str, Any]:
        """Write this node's state to Redis (with a TTL) and return it."""
        state: dict[str, Any] = {"node": self.node, "host": self.host, "runtime_url": self.settings.runtime_url,
                                 "at": time.time()}
        try:
            resident = self.resident()
            state["runtime_up"] = True
        except Exception as exc:  # runtime down: publish that, never die
            error = node_problems.not_ollama(self.settings.runtime_url, exc) or str(exc)
            resident, state["runtime_up"], state["runtime_error"] = [], False, error
        state["resident"] = resident
        state["warnings"] = self.warnings(state["runtime_up"])
        state["memory"] = self.monitor.read(sum(m["size"] for m in resident)).as_dict()
        with self._lock:
            state["ops"] = dict(self.ops)
        pipe = self.r.pipeline()
        pipe.set(keys.node_state(self.node), json.dumps(state), px=int(self.settings.state_ttl_s * 1000))
        pipe.zadd(keys.NODES, {self.node: state["at"]})
        pipe.execute()
        return state

    def warnings(self, runtime_up: bool) -> list[str]:
        """What is wrong with this node's setup though its runtime answers (see :mod:`mm.node_problems`)."""
        found = [self.memory_warning] if self.memory_warning else []
        if runtime_up and self.models_listed == 0:
            found.append(node_problems.no_models(self.settings.runtime_url))
        return found

    def sync_registry(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_sync < TAGS_SYNC_EVERY_S:
            return
        self._last_sync = time.monotonic()
        tags = [
            {"name": m.model, "size": m.size, "digest": m.digest,
             "details": m.details.model_dump() if m.details else {}, **self.show(m.model or "", m.digest or "")}
            for m in self.runtime.list().models
        ]
        self.models_listed = len(tags)
        for name in registry.sync_node(self.r, self.node, tags, self.settings):
            log.info("REGISTRY model %s registered from %s", name, self.node)

    def show(self, model: str, digest: str) -> dict[str, Any]:
        """The model's capabilities and context length from ``/api/show``, once per version of it.

        Empty when the runtime does not answer: the registry keeps what it knew and the next sync asks again.
        """
        key = (model, digest)
        if key not in self._shown:
            try:
                shown = self.runtime.show(model)
            except Exception as exc:  # a runtime without /api/show, or one restarting
                log.warning("show %s on %s failed: %s", model, self.settings.runtime_url, exc)
                return {}
            info = getattr(shown, "modelinfo", None) or {}
            lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
            facts: dict[str, Any] = {"context_length": lengths[0] if lengths else 0}
            capabilities = getattr(shown, "capabilities", None)
            if capabilities:  # an older runtime lists none: unknown, so validation does not refuse on them
                facts["capabilities"] = list(capabilities)
            self._shown[key] = facts
        return self._shown[key]

    def start(self) -> None:
        """Sync the registry and publish state every heartbeat in a background thread."""
        self._heartbeat.start()

    def stop(self) -> None:
        """Stop the heartbeat and take this node's state out of Redis."""
        self._heartbeat.stop()
        self.r.delete(keys.node_state(self.node))

    def _beat(self) -> None:
        try:
            self.sync_registry()
        except Exception as exc:  # the runtime is down or restarting; publish() reports it
            log.warning("registry sync from %s failed: %s", self.settings.runtime_url, exc)
        self.publish()

    # --- commands ----------------------------------------------------------------------
    def _fenced(self, op: str, model: str, token: int, body: Callable[[], dict[str, Any]],
                waited_s: float | None = None) -> dict[str, Any]:
        newer = check_fence(self.r, self.node, token)
        if newer:
            log.warning("FENCE refused %s %s with token %s: token %s already seen", op, model, token, newer)
            raise StaleToken(f"{op} {model}: token {token} is older than {newer}")
        log.info("FENCE accepted %s %s with token %s", op, model, token)
        started = time.time()
        self._set_op(model, {"op": op, "state": "running", "token": token, "at": started, "waited_s": waited_s})
        # Published before the runtime is asked: if this process dies mid-load, the runtime finishes
        # the load, and the next leader must see the node busy until a fresh agent reports it.
        self.publish()
        try:
            result = body()
        except Exception as exc:
            self._set_op(model, {"op": op, "state": "failed", "token": token, "at": time.time(), "error": str(exc)})
            events.emit(self.r, f"{op}_failed", model=model, node=self.node, error=str(exc))
            self.publish()
            raise
        self._set_op(model, {"op": op, "state": "done", "token": token, "at": time.time(),
                             "seconds": round(time.time() - started, 3)})
        self.publish()
        return result

    def _set_op(self, model: str, op: dict[str, Any]) -> None:
        with self._lock:
            self.ops[model] = op

    def _touch(self, model: str, keep_alive: int, options: dict[str, Any] | None = None) -> None:
        """Load (keep_alive -1) or unload (0) with an empty request, as Ollama documents it.

        An embedding-only model refuses /api/generate, so it gets an empty /api/embed instead.
        """
        try:
            self.runtime.generate(model=model, prompt="", keep_alive=keep_alive, options=options)
        except ollama.ResponseError as exc:
            if exc.status_code != 400 or "does not support" not in str(exc.error):
                raise
            self.runtime.embed(model=model, input=[], keep_alive=keep_alive, options=options)

    def load(self, model: str, token: int, decided_at: float | None = None) -> dict[str, Any]:
        """Load ``model`` with its fixed options and keep_alive -1; learn its real size.

        ``decided_at`` is when the leader decided it: the wait until now is reported as ``waited_s``.
        """
        waited_s = _waited(decided_at)

        def body() -> dict[str, Any]:
            entry = registry.get(self.r, model)
            options = entry.load_options if entry else {}
            started = time.time()
            try:
                self._touch(model, keep_alive=-1, options=options)
            except ollama.ResponseError as exc:
                if entry is not None and "memory" in str(exc.error).lower():
                    self._learn_from_oom(model, entry.size, str(exc.error))
                raise
            load_s = time.time() - started
            self.loaded[model] = {"loaded_at": time.time(), "load_s": load_s}
            size = next((m["size"] for m in self.resident() if m["model"] == model), 0)
            registry.learn_size(self.r, model, size)
            log.info("LOAD %s on %s in %.2fs (%d bytes)", model, self.node, load_s, size)
            events.emit(self.r, "load", model=model, node=self.node, seconds=round(load_s, 3), size=size,
                        waited_s=waited_s)
            return {"model": model, "node": self.node, "load_s": load_s, "size": size}

        return self._fenced("load", model, token, body, waited_s)

    def _learn_from_oom(self, model: str, size: int, error: str) -> None:
        """Learn from a load that ran out of memory, so that the next plan makes room instead of retrying it.

        If the runtime holds clearly less than the memory budget, the budget is wrong: plan with what
        it holds and say so. Otherwise the model is bigger than thought: learn its size.
        """
        available = node_problems.available_bytes(error)
        if isinstance(self.monitor, BudgetMonitor) and available is not None:
            holds = node_problems.RuntimeHolds(sum(m["size"] for m in self.resident()), available)
            if holds.below(self.monitor.budget):
                self.memory_warning = holds.budget_too_large(self.monitor.budget, model)
                self.monitor.lower_to(holds.capacity)
                log.error("LOAD %s out of memory: %s", model, self.memory_warning)
                return
        grown = max(node_problems.required_bytes(error) or 0, int(size * OOM_GROWTH))
        registry.learn_size(self.r, model, grown)
        log.warning("LOAD %s out of memory: %s; size now taken as %d bytes", model, error, grown)

    def unload(self, model: str, token: int, reason: str = "", decided_at: float | None = None) -> dict[str, Any]:
        """Unload ``model`` and wait until its memory shows as free (NVML lags); ``decided_at`` as for load."""
        waited_s = _waited(decided_at)

        def body() -> dict[str, Any]:
            marker = keys.unloading(self.node, model)
            self.r.set(marker, 1, ex=int(DRAIN_WAIT_S + self.settings.unload_settle_s + 30))
            try:
                if not self._wait_drained(model):
                    raise RuntimeError(f"{model} still has jobs running on {self.node} after {DRAIN_WAIT_S:.0f}s")
                resident = self.resident()
                size = next((m["size"] for m in resident if m["model"] == model), 0)
                free_before = self.monitor.read(sum(m["size"] for m in resident)).free
                self._touch(model, keep_alive=0)
                self.loaded.pop(model, None)
                freed = self._wait_freed(model, free_before + size // 2)
                self.publish()  # workers now see it gone before the marker is lifted
            finally:
                self.r.delete(marker)
            log.info("UNLOAD %s on %s (%s)%s", model, self.node, reason or "policy",
                     "" if freed else ", memory slow to free")
            events.emit(self.r, "unload", model=model, node=self.node, reason=reason, waited_s=waited_s)
            return {"model": model, "node": self.node, "freed": freed}

        return self._fenced("unload", model, token, body, waited_s)

    def _wait_drained(self, model: str) -> bool:
        """Wait until no worker on this node runs a job of ``model`` (they count a job before checking)."""
        deadline = time.monotonic() + DRAIN_WAIT_S
        while time.monotonic() < deadline:
            workers = read_records(self.r).workers.values()
            if not any(w["node"] == self.node and w.get("running", {}).get(model) for w in workers):
                return True
            time.sleep(0.05)
        return False

    def _wait_freed(self, model: str, target_free: int) -> bool:
        """Poll until ``model`` left the runtime and most of its memory shows free, as Ollama does."""
        deadline = time.monotonic() + self.settings.unload_settle_s
        while time.monotonic() < deadline:
            resident = self.resident()
            if all(m["model"] != model for m in resident):
                if self.monitor.read(sum(m["size"] for m in resident)).free >= target_free:
                    return True
            time.sleep(0.25)
        return False

    def pull(self, model: str, token: int, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Pull ``model`` into the runtime, reporting progress; it then registers itself.

        The runtime's final ``success`` is reported only once the registry lists the model, so a
        client that saw it can use the model at once.
        """

        def body() -> dict[str, Any]:
            last: dict[str, Any] = {}
            for update in self.runtime.pull(model, stream=True):
                last = update.model_dump(exclude_none=True)
                if last.get("status") != "success":
                    progress(last)
            self.sync_registry(force=True)
            events.emit(self.r, "pull", model=model, node=self.node)
            log.info("PULL %s on %s: %s", model, self.node, last.get("status", ""))
            if last.get("status") == "success":
                progress(last)
            return {"model": model, "node": self.node, "status": last.get("status", "")}

        return self._fenced("pull", model, token, body)

    def delete(self, model: str, token: int) -> dict[str, Any]:
        """Delete ``model`` from the runtime (refused while it is resident here); the registry drops this node."""

        def body() -> dict[str, Any]:
            if any(m["model"] == model for m in self.resident()):
                raise RuntimeError(f"{model} is resident on {self.node}; unload it first")
            self.runtime.delete(model)
            self.loaded.pop(model, None)
            self.sync_registry(force=True)
            log.info("DELETE %s on %s", model, self.node)
            events.emit(self.r, "delete", model=model, node=self.node)
            return {"model": model, "node": self.node}

        return self._fenced("delete", model, token, body)
