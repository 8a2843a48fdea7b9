"""A discrete-event model of an mm cluster that runs mm's own policy, ``mm.scheduling.policy.plan``.

Every leader tick (every ``tick_s``, and at once when jobs arrive, as the live leader wakes on
``mm:wake``) the simulator builds a :class:`~mm.scheduling.snapshot.Snapshot` exactly as
``mm/scheduling/reader.py`` describes the cluster, calls ``plan()`` and applies the actions:

- ``Load``: the node is busy (``pending``) for ``size / load_bandwidth`` seconds; the model
  occupies its memory from the start (the runtime lists a loading model) and becomes usable,
  with ``loaded_at`` set, when the load ends. Sizes are planned as the live leader plans them
  (``planning_size``): learned after the first load, else the registry's estimate.
- ``Unload``: frees the memory at once (the sim runtime's unload is instantaneous).
- ``Bind`` / ``Unbind``: the worker consumes that model's queue, or stops (its running jobs finish).
- ``Reject``: the model's queued jobs fail.

Between ticks, bound workers take jobs from their model's queue as slots free up (high before
normal before low, FIFO within a class, as kombu's priority lists do), provided the model is
resident and loaded on their node; the runtime runs at most ``parallel`` of them at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace

from bench.simcore import Outcome, Trace, TraceJob, duration, load_s
from mm.registry import ModelEntry
from mm.scheduling.policy import plan
from mm.scheduling.reader import planning_size
from mm.scheduling.snapshot import (
    PRIORITY_CLASSES,
    Bind,
    Demand,
    Load,
    ModelInfo,
    Node,
    Reject,
    Resident,
    Snapshot,
    Unbind,
    Unload,
    Worker,
)
from mm.settings import Settings

_DEFAULTS = Settings()


@dataclass(frozen=True)
class MMConfig:
    """The mm deployment being simulated: settings as in ``mm.settings`` plus the worker layout."""

    tick_s: float = _DEFAULTS.tick_s
    workers: int = 4  # model-workers per node
    slots: int = _DEFAULTS.worker_slots  # threads per model-worker
    safety_margin: int = _DEFAULTS.safety_margin
    min_residency_s: float = _DEFAULTS.min_residency_s
    aging_s: float = _DEFAULTS.aging_s
    size_multiplier: float = _DEFAULTS.size_multiplier
    max_parallel: int = _DEFAULTS.default_max_parallel
    placement: str = _DEFAULTS.placement
    replica_backlog: int = _DEFAULTS.replica_backlog
    command_s: float = 0.0  # from the leader's decision to the node agent starting a load

    def scaled(self, factor: float) -> MMConfig:
        """Time settings that belong to the workload (residency, aging) scaled with it; tick_s is not."""
        return replace(self, min_residency_s=self.min_residency_s * factor, aging_s=self.aging_s * factor)


@dataclass
class _Res:
    size: int
    loaded_at: float = 0.0
    last_used: float = 0.0
    ready: bool = False
    in_flight: int = 0  # jobs started by workers (running or waiting for a runtime slot)
    executing: int = 0  # jobs the runtime is running
    waiting: deque = field(default_factory=deque)  # jobs waiting for a runtime slot


@dataclass
class _Worker:
    hostname: str
    slots: int
    bound: str | None = None
    running: int = 0


@dataclass
class _Node:
    name: str
    total: int
    workers: list[_Worker]
    resident: dict[str, _Res] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.total - sum(r.size for r in self.resident.values())


class MMSim:
    """One simulated run of ``trace`` on an mm cluster configured by ``config``."""

    def __init__(self, trace: Trace, config: MMConfig | None = None):
        self.trace = trace
        self.cfg = config or MMConfig()
        self.specs = trace.models
        self.nodes = {
            f"n{i}": _Node(f"n{i}", trace.memory,
                           [_Worker(f"w{k}@n{i}", self.cfg.slots) for k in range(self.cfg.workers)])
            for i in range(trace.nodes)
        }
        self.queues: dict[str, dict[str, deque[TraceJob]]] = {
            m: {c: deque() for c in PRIORITY_CLASSES} for m in self.specs
        }
        self.learned: set[str] = set()
        self.events: list[tuple[float, int, str, tuple]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.out = Outcome("mm", trace.name, nodes=trace.nodes)
        self.ticks = 0
        self.plan_seconds = 0.0

    # --- driving -------------------------------------------------------------------------
    def run(self) -> Outcome:
        jobs = self.trace.jobs
        if not jobs:
            return self.out
        self.out.first_arrival = jobs[0].t
        horizon = jobs[-1].t + 50 * (sum(duration(self.specs[j.model], j) for j in jobs)
                                     + sum(load_s(s) for s in self.specs.values()) * 20) + 100 * self.cfg.tick_s
        # The live leader ticks on every submission and otherwise tick_s after its last tick, however
        # many jobs end in between: job ends and finished loads do not postpone the next tick.
        i, next_tick, last_tick = 0, math.inf, -math.inf
        while self.out.settled < len(jobs):
            t_arrival = jobs[i].t if i < len(jobs) else math.inf
            t_event = self.events[0][0] if self.events else math.inf
            self.now = min(t_arrival, t_event, next_tick)
            if self.now > horizon or self.now == math.inf:
                self.out.failed += len(jobs) - self.out.settled  # stalled: jobs left queued forever
                break
            if self.now == t_arrival:
                while i < len(jobs) and jobs[i].t <= self.now:
                    self.queues[jobs[i].model][jobs[i].priority].append(jobs[i])
                    i += 1
                self._tick()
                last_tick = self.now
            elif self.now == t_event:
                while self.events and self.events[0][0] <= self.now:
                    _, _, kind, data = heapq.heappop(self.events)
                    self._handle(kind, data)
            else:
                self._tick()
                last_tick = self.now
            self._dispatch()
            next_tick = max(last_tick + self.cfg.tick_s, self.now) if self._busy() else math.inf
        return self.out

    def _busy(self) -> bool:
        if any(q for per_model in self.queues.values() for q in per_model.values()):
            return True
        return any(n.pending or any(r.in_flight for r in n.resident.values()) for n in self.nodes.values())

    def _at(self, t: float, kind: str, data: tuple) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    # --- the policy ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The cluster as the live leader's snapshot reader would describe it now."""
        now, cfg = self.now, self.cfg
        models = {m: ModelInfo(m, self._believed_size(m), cfg.max_parallel) for m in self.specs}
        demand = {}
        for m, per_class in self.queues.items():
            queued = {c: len(q) for c, q in per_class.items() if q}
            if queued:
                demand[m] = Demand(m, queued, {c: max(0.0, now - per_class[c][0].t) for c in queued})
        nodes = {}
        for name, n in self.nodes.items():
            resident = {m: Resident(m, r.size, r.loaded_at, max(r.last_used, r.loaded_at), r.in_flight)
                        for m, r in n.resident.items()}
            workers = tuple(Worker(w.hostname, w.slots, w.bound, w.running) for w in n.workers)
            nodes[name] = Node(name, n.total, n.free, resident, workers, frozenset(n.pending))
        return Snapshot(now=now, models=models, demand=demand, nodes=nodes, safety_margin=cfg.safety_margin,
                        min_residency_s=cfg.min_residency_s, aging_s=cfg.aging_s, placement=cfg.placement,
                        replica_backlog=cfg.replica_backlog)

    def _believed_size(self, model: str) -> int:
        """The size the live leader plans with (``mm.scheduling.reader.planning_size``, the same code):
        learned after the first load, before that the registry's estimate (tag size x size_multiplier)."""
        size = self.specs[model].size
        entry = ModelEntry(model, tag_size=size, size_estimate=int(size * self.cfg.size_multiplier),
                           learned_size=size if model in self.learned else 0)
        return planning_size(entry, max(n.total for n in self.nodes.values()), self.cfg.safety_margin)

    def _tick(self) -> None:
        snapshot = self.snapshot()
        started = time.perf_counter()
        actions = plan(snapshot)
        self.plan_seconds += time.perf_counter() - started
        self.ticks += 1
        for action in actions:
            self._apply(action)

    def _apply(self, action) -> None:
        if isinstance(action, Reject):
            for q in self.queues[action.model].values():
                self.out.failed += len(q)
                q.clear()
            return
        node = self.nodes[action.node]
        if isinstance(action, (Bind, Unbind)):
            worker = next(w for w in node.workers if w.hostname == action.worker)
            if isinstance(action, Bind):
                worker.bound = action.model
            elif worker.bound == action.model:
                worker.bound = None
        elif isinstance(action, Unload):
            res = node.resident.pop(action.model)
            if res.in_flight:
                raise AssertionError(f"policy unloaded {action.model} with {res.in_flight} jobs in flight")
        elif isinstance(action, Load):
            spec = self.specs[action.model]
            if spec.size > node.free:  # the runtime (evict none) refuses it: out of memory
                self.out.failed_loads += 1
                return
            node.resident[action.model] = _Res(spec.size)
            node.pending.add(action.model)
            self.out.loads += 1
            self.out.load_seconds += load_s(spec)
            self._at(self.now + self.cfg.command_s + load_s(spec), "loaded", (node.name, action.model))

    # --- the cluster -----------------------------------------------------------------------
    def _handle(self, kind: str, data: tuple) -> None:
        if kind == "loaded":
            node, model = self.nodes[data[0]], data[1]
            res = node.resident[model]
            res.ready, res.loaded_at, res.last_used = True, self.now, self.now
            node.pending.discard(model)
            self.learned.add(model)
            return
        node, worker, model, job = self.nodes[data[0]], data[1], data[2], data[3]
        res = node.resident[model]
        res.executing -= 1
        if res.waiting:
            self._execute(node, model, res, res.waiting.popleft())
        res.in_flight -= 1
        res.last_used = self.now
        worker.running -= 1
        self.out.finish(job, self.now)

    def _execute(self, node: _Node, model: str, res: _Res, item: tuple) -> None:
        worker, job = item
        res.executing += 1
        self._at(self.now + duration(self.specs[model], job), "done", (node.name, worker, model, job))

    def _dispatch(self) -> None:
        """Bound workers with free slots take queued jobs of their model, if it is loaded on their node."""
        for node in self.nodes.values():
            for worker in node.workers:
                model = worker.bound
                res = node.resident.get(model) if model else None
                if res is None or not res.ready:
                    continue
                per_class = self.queues[model]
                while worker.running < worker.slots:
                    q = next((per_class[c] for c in PRIORITY_CLASSES if per_class[c]), None)
                    if q is None:
                        break
                    job = q.popleft()
                    worker.running += 1
                    res.in_flight += 1
                    if res.executing < self.specs[model].parallel:
                        self._execute(node, model, res, (worker, job))
                    else:
                        res.waiting.append((worker, job))


def simulate_mm(trace: Trace, config: MMConfig | None = None) -> Outcome:
    """Run ``trace`` through mm's policy on a simulated cluster."""
    return MMSim(trace, config).run()
