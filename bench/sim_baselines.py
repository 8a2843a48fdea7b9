"""What mm is compared with, on the same physics (see :mod:`bench.simcore`).

- :func:`simulate_ollama`: Ollama's scheduler as ``mm runtime --evict ollama`` implements it
  (``mm/runtime/scheduler.py``), with clients calling it directly: requests in FIFO order, a load
  on demand, one load at a time, eviction of the idle model expiring soonest (then the shortest
  keep_alive) when memory is short, a model with requests never evicted, and head-of-line
  blocking: while the head request waits (for memory, or for its load), everything behind it
  waits, even requests for resident models. Priorities are ignored (Ollama has none).
  ``gpus`` > 1 models one Ollama server on a multi-GPU host (``trace.memory`` per GPU), as
  Ollama's ``pickBestFullFitByLibrary`` places a model: on the one GPU with the most free memory
  if it fits there, else split over the fewest GPUs (most free first) whose free memory together
  holds it, layers in proportion to their free memory; if it fits nowhere, evict as above and
  retry. ``max_loaded`` caps the loaded models (Ollama's ``OLLAMA_MAX_LOADED_MODELS``, by default
  3 per GPU); ``None``, as in ``mm runtime --evict ollama``, sets no cap. ``concurrent_loads``
  follows Ollama's scheduler on several GPUs (since 0.1.33, ``filterGPUsWithoutLoadingModels``):
  a load may start on GPUs with no load under way while others load; a request whose model fits
  only on GPUs that are loading is put back (Ollama re-queues it) and the requests behind it go
  on; only when no load is under way does it evict (and, with nothing idle to evict, wait, and
  everything behind it with it).
- :func:`simulate_naive`: one job at a time in arrival order; load the job's model if needed,
  evicting least recently used models until it fits.
- :func:`simulate_no_swap`: a reference, not a scheduler: every model resident from the start
  (unlimited memory, no loads), each serving ``min(max_parallel, parallel)`` jobs at once, high
  before normal before low. What latency looks like when swapping costs nothing.
- :func:`lower_bound`: no scheduler can finish a trace sooner.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from bench.simcore import Outcome, Trace, TraceJob, duration, load_s

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default, what a client that sets none gets


@dataclass(eq=False)
class _Runner:
    model: str
    size: int
    ready: bool = False
    leases: int = 0
    keep_alive: float = DEFAULT_KEEP_ALIVE_S
    idle_since: float | None = None
    expiry: int = 0  # generation of the armed expiry timer; a stale timer does nothing
    executing: int = 0
    slot_queue: deque = field(default_factory=deque)
    ready_waiters: list = field(default_factory=list)
    alloc: dict[int, int] = field(default_factory=dict)  # GPU -> bytes of this model on it

    def expires_in(self, now: float) -> float:
        if self.leases or self.idle_since is None:
            return self.keep_alive
        return max(0.0, self.keep_alive - (now - self.idle_since))


class OllamaSim:
    """One node running Ollama's scheduler; each trace job is one client request.

    The node is one Ollama server with ``gpus`` GPUs of ``trace.memory`` bytes each (see the
    module docstring for placement over several GPUs); with ``gpus=1`` and no ``max_loaded``, the
    single-GPU server that ``mm runtime --evict ollama`` implements.
    """

    def __init__(self, trace: Trace, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, gpus: int = 1,
                 max_loaded: int | None = None, name: str = "ollama-like", concurrent_loads: bool = False):
        if trace.nodes != 1:
            raise ValueError("the Ollama-like baseline models one node (one Ollama server)")
        if gpus < 1:
            raise ValueError(f"gpus must be at least 1, not {gpus}")
        self.trace = trace
        self.keep_alive = keep_alive_s
        self.gpus = gpus
        self.max_loaded = max_loaded
        self.concurrent_loads = concurrent_loads
        self.loads_under_way: set[_Runner] = set()  # concurrent_loads: runners loading now
        self.blocked = False  # concurrent_loads: a request waits for an eviction; those behind it wait too
        self.specs = trace.models
        self.runners: dict[str, _Runner] = {}
        self.pending: deque[list] = deque()  # [job, assigned]
        self.loading: _Runner | None = None  # the placement loop waits for this load
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.out = Outcome(name, trace.name, nodes=gpus)

    def run(self) -> Outcome:
        jobs = self.trace.jobs
        if jobs:
            self.out.first_arrival = jobs[0].t
        for job in jobs:
            self._at(job.t, "arrive", job)
        while self.events:
            self.now, _, kind, data = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(data)
        self.out.failed += len(jobs) - self.out.settled
        return self.out

    def _at(self, t: float, kind: str, data: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def _free(self, gpu: int) -> int:
        return self.trace.memory - sum(r.alloc.get(gpu, 0) for r in self.runners.values())

    def _fit(self, size: int, gpus: list[int] | None = None) -> dict[int, int] | None:
        """Where a model of ``size`` bytes goes now (GPU -> bytes), or None if it fits nowhere.

        One GPU, the one with the most free memory, if it fits there; else the fewest GPUs, most
        free first, that hold it together, each taking a share in proportion to its free memory.
        Only ``gpus`` are considered when given.
        """
        candidates = range(self.gpus) if gpus is None else gpus
        free = sorted(((self._free(g), g) for g in candidates), key=lambda fg: (-fg[0], fg[1]))
        for k in range(1, len(free) + 1):
            subset = free[:k]
            room = sum(f for f, _ in subset)
            if size <= room:
                alloc = {g: size * f // room for f, g in subset}
                alloc[subset[0][1]] += size - sum(alloc.values())
                return alloc
        return None

    # --- requests --------------------------------------------------------------------------
    def _on_arrive(self, job: TraceJob) -> None:
        if self.concurrent_loads:
            item = [job, False]
            state = "blocked" if self.blocked else self._place_concurrent(item)
            if state != "placed":
                self.pending.append(item)
                self.blocked = state == "blocked"
            return
        runner = self.runners.get(job.model)
        if not self.pending and runner is not None:
            self._assign(runner, job)
        else:
            self.pending.append([job, False])
            self._drain()

    def _assign(self, runner: _Runner, job: TraceJob) -> None:
        runner.leases += 1
        runner.keep_alive = self.keep_alive
        runner.idle_since = None
        runner.expiry += 1  # cancels an armed timer
        if runner.ready:
            self._take_slot(runner, job)
        else:
            runner.ready_waiters.append(job)

    def _take_slot(self, runner: _Runner, job: TraceJob) -> None:
        if runner.executing < self.specs[runner.model].parallel and not runner.slot_queue:
            runner.executing += 1
            self._at(self.now + duration(self.specs[runner.model], job), "done", (runner, job))
        else:
            runner.slot_queue.append(job)

    def _on_done(self, data: tuple[_Runner, TraceJob]) -> None:
        runner, job = data
        self.out.finish(job, self.now)
        if runner.slot_queue:  # the slot passes to the oldest waiter
            nxt = runner.slot_queue.popleft()
            self._at(self.now + duration(self.specs[runner.model], nxt), "done", (runner, nxt))
        else:
            runner.executing -= 1
        runner.leases -= 1
        if runner.leases == 0:
            runner.idle_since = self.now
            self._arm_expiry(runner)
            self._drain()

    def _arm_expiry(self, runner: _Runner) -> None:
        runner.expiry += 1
        if math.isfinite(runner.keep_alive):
            self._at(self.now + runner.keep_alive, "expire", (runner, runner.expiry))

    def _on_expire(self, data: tuple[_Runner, int]) -> None:
        runner, generation = data
        if generation == runner.expiry and runner.leases == 0 and runner.ready and self.runners.get(runner.model) is runner:
            del self.runners[runner.model]
            self._drain()

    # --- placement (one load at a time, head-of-line) --------------------------------------
    def _drain(self) -> None:
        if self.concurrent_loads:
            self._drain_concurrent()
            return
        while self.pending and self.loading is None:
            head = self.pending[0]
            if head[1]:
                self.pending.popleft()
                continue
            if not self._place(head):
                return  # the head waits, and everything behind it

    def _place(self, head: list) -> bool:
        job: TraceJob = head[0]
        spec = self.specs[job.model]
        while True:
            if self._served_or_failed(head):
                return True
            alloc = self._fit(spec.size)
            if alloc is None or (self.max_loaded is not None and len(self.runners) >= self.max_loaded):
                if not self._evict_idle():
                    return False
                continue
            self.loading = self._start_load(head, spec, alloc)
            return False  # the loop waits for this load before placing anything else

    def _served_or_failed(self, item: list) -> bool:
        """Assign the request to its model's runner if there is one, or fail it if its model is
        larger than the whole budget; True if it is settled either way."""
        job: TraceJob = item[0]
        runner = self.runners.get(job.model)
        if runner is not None:
            self._assign(runner, job)
        elif self.specs[job.model].size > self.trace.memory * self.gpus:
            self.out.failed += 1
        else:
            return False
        item[1] = True
        return True

    def _evict_idle(self) -> bool:
        """Evict the idle runner expiring soonest (Ollama's choice); False if none is idle."""
        idle = [r for r in self.runners.values() if r.ready and r.leases == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda r: (r.expires_in(self.now), r.keep_alive))
        del self.runners[victim.model]
        return True

    def _start_load(self, item: list, spec, alloc) -> _Runner:
        """Start loading the request's model on ``alloc`` and give the request to it."""
        runner = _Runner(item[0].model, spec.size, alloc=alloc)
        self.runners[item[0].model] = runner
        self._assign(runner, item[0])
        item[1] = True
        self.out.loads += 1
        self.out.load_seconds += load_s(spec)
        self._at(self.now + load_s(spec), "loaded", runner)
        return runner

    def _on_loaded(self, runner: _Runner) -> None:
        runner.ready = True
        for job in runner.ready_waiters:
            self._take_slot(runner, job)
        runner.ready_waiters.clear()
        if runner.leases == 0:
            runner.idle_since = self.now
            self._arm_expiry(runner)
        self.loading = None
        self.loads_under_way.discard(runner)
        self._drain()

    # --- placement with concurrent loads on several GPUs -----------------------------------
    def _drain_concurrent(self) -> None:
        """Place waiting requests in order; those waiting for a GPU that is loading are skipped,
        and the first that waits for an eviction stops the pass (everything behind it waits)."""
        self.blocked = False
        kept: deque[list] = deque()
        no_room: set[str] = set()  # models found to fit on no idle GPU in this pass
        while self.pending:
            item = self.pending.popleft()
            if item[0].model in no_room and item[0].model not in self.runners:
                kept.append(item)
                continue
            state = self._place_concurrent(item)
            if state == "placed":
                continue
            kept.append(item)
            if state == "blocked":
                self.blocked = True
                kept.extend(self.pending)
                self.pending.clear()
            else:
                no_room.add(item[0].model)
        self.pending = kept

    def _place_concurrent(self, item: list) -> str:
        """``placed`` (assigned, loading, or failed), ``skipped`` (fits only where loads are under
        way: retried when one ends) or ``blocked`` (needs an eviction and nothing is idle)."""
        spec = self.specs[item[0].model]
        while True:
            if self._served_or_failed(item):
                return "placed"
            busy = {g for r in self.loads_under_way for g in r.alloc}
            full = self.max_loaded is not None and len(self.runners) >= self.max_loaded
            alloc = None if full else self._fit(spec.size, [g for g in range(self.gpus) if g not in busy])
            if alloc is None:
                if busy and not full:
                    return "skipped"  # Ollama re-queues it while other models finish loading
                if not self._evict_idle():
                    return "blocked"
                continue
            self.loads_under_way.add(self._start_load(item, spec, alloc))
            return "placed"


def simulate_ollama(trace: Trace, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, gpus: int = 1,
                    max_loaded: int | None = None, name: str = "ollama-like",
                    concurrent_loads: bool = False) -> Outcome:
    """Run ``trace`` as direct client requests against an Ollama-like server (``gpus`` GPUs of ``trace.memory``)."""
    return OllamaSim(trace, keep_alive_s, gpus, max_loaded, name, concurrent_loads).run()


def simulate_naive(trace: Trace) -> Outcome:
    """One job at a time, in arrival order; load its model if needed, evicting LRU models to fit."""
    out = Outcome("naive-fifo", trace.name, nodes=trace.nodes)
    if trace.jobs:
        out.first_arrival = trace.jobs[0].t
    resident: dict[str, float] = {}  # model -> last used
    now = 0.0
    for job in trace.jobs:
        spec = trace.models[job.model]
        now = max(now, job.t)
        if spec.size > trace.memory:
            out.failed += 1
            continue
        if job.model not in resident:
            while sum(trace.models[m].size for m in resident) + spec.size > trace.memory:
                del resident[min(resident, key=resident.get)]
            now += load_s(spec)
            out.loads += 1
            out.load_seconds += load_s(spec)
        now += duration(spec, job)
        resident[job.model] = now
        out.finish(job, now)
    return out


def simulate_no_swap(trace: Trace, max_parallel: int) -> Outcome:
    """Every model always resident: per model, ``min(max_parallel, parallel)`` servers, by priority then FIFO."""
    out = Outcome("no-swap", trace.name, nodes=trace.nodes)
    if trace.jobs:
        out.first_arrival = trace.jobs[0].t
    rank = {"high": 0, "normal": 1, "low": 2}
    by_model: dict[str, list[TraceJob]] = {}
    for job in trace.jobs:
        by_model.setdefault(job.model, []).append(job)
    for model, jobs in by_model.items():
        spec = trace.models[model]
        free_at = [jobs[0].t] * max(1, min(max_parallel, spec.parallel))  # when each server is next free
        waiting: list[tuple[int, float, int, TraceJob]] = []
        i = 0
        while i < len(jobs) or waiting:
            now = heapq.heappop(free_at)
            if not waiting and jobs[i].t > now:
                now = jobs[i].t
            while i < len(jobs) and jobs[i].t <= now:
                heapq.heappush(waiting, (rank[jobs[i].priority], jobs[i].t, i, jobs[i]))
                i += 1
            job = heapq.heappop(waiting)[3]
            end = now + duration(spec, job)
            out.finish(job, end)
            heapq.heappush(free_at, end)
    return out


def lower_bound(trace: Trace, slots: int, max_parallel: int) -> float:
    """A makespan no scheduler on this physics can beat, even one that knows the whole trace.

    The largest of: any job's arrival plus its duration; per model, its work from any arrival on
    spread over ``min(max_parallel, parallel)`` slots per node (one copy per node at most), starting
    no sooner than that arrival and the model's own load (from time 0); all work from any arrival
    on spread over every worker slot of the cluster (``slots``); and, per node, the loads every
    used model needs at least once (loads on a node are serial), plus the shortest job that must
    follow the last of them.
    """
    jobs = trace.jobs
    if not jobs:
        return 0.0
    t0 = jobs[0].t
    bound = max(j.t + duration(trace.models[j.model], j) for j in jobs)
    by_model: dict[str, list[TraceJob]] = {}
    for job in jobs:
        by_model.setdefault(job.model, []).append(job)
    for model, mjobs in by_model.items():
        spec = trace.models[model]
        cap = max(1, min(max_parallel, spec.parallel)) * trace.nodes  # at most a copy per node
        bound = max(bound, _suffix_bound(mjobs, trace, cap, floor=t0 + load_s(spec)))
    bound = max(bound, _suffix_bound(jobs, trace, slots, floor=t0))
    loads = sum(load_s(trace.models[m]) for m in by_model) / trace.nodes
    tail = min(duration(trace.models[j.model], j) for j in jobs) if trace.nodes == 1 else 0.0
    return max(bound, t0 + loads + tail) - t0


def _suffix_bound(jobs: list[TraceJob], trace: Trace, capacity: int, floor: float) -> float:
    """max over k of max(release_k, floor) + (work of jobs released at or after k) / capacity."""
    best, work = 0.0, 0.0
    for job in reversed(jobs):  # jobs are sorted by arrival
        work += duration(trace.models[job.model], job)
        best = max(best, max(job.t, floor) + work / capacity)
    return best
