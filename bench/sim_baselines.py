"""What mm is compared with, on the same physics (see :mod:`bench.simcore`).

- :func:`simulate_ollama`: Ollama's scheduler as its ``server/sched.go`` is written (v0.33.0-rc2;
  the behaviours below hold since v0.11.5), with clients calling it directly; ``mm runtime --evict
  ollama`` follows the same rules live. The rules and defaults are in
  :mod:`mm.runtime.ollama_rules`; how each works here is in :class:`OllamaSim`. Two settings are
  compared everywhere (:data:`OLLAMA_ROWS`): ``ollama-default``, what ``ollama serve`` does out of
  the box (``OLLAMA_NUM_PARALLEL`` 1, ``OLLAMA_MAX_QUEUE`` 512, ``OLLAMA_MAX_LOADED_MODELS`` 3 per
  GPU), and ``ollama-tuned``, a server tuned for the trace (``NUM_PARALLEL`` = each model's own
  ``parallel``, the slots mm gets; a queue large enough that nothing is refused).
- :func:`simulate_naive`: one job at a time in arrival order, loading the job's model if needed
  and evicting least recently used models until it fits. A floor no real server has (every
  server runs more than one request at a time), kept to show what FIFO alone costs.
- :func:`simulate_no_swap`: a reference, not a scheduler: every model resident from the start
  (unlimited memory, no loads), each serving ``min(max_parallel, parallel)`` jobs at once, high
  before normal before low. What latency looks like when swapping costs nothing.
- :func:`lower_bound`: no scheduler can finish a trace sooner.

The baseline these replace (until issue 17) matched no Ollama release: it queued requests for
loaded models behind a pending load (as before v0.11.5), yet evicted the idle model expiring
soonest (no release did: they sort by keep_alive and blob path), never evicted a busy one, set no
cap on loaded models or on the queue, ran every model at its own ``parallel``, and on several
GPUs loaded concurrently (``filterGPUsWithoutLoadingModels``, gone in v0.11.5).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from bench.simcore import Outcome, Trace, TraceJob, duration, load_s
from mm.runtime import ollama_rules as rules

DEFAULT_KEEP_ALIVE_S = rules.DEFAULT_KEEP_ALIVE_S  # OLLAMA_KEEP_ALIVE's default

# The two Ollama settings every bench compares (keyword arguments of simulate_ollama).
OLLAMA_ROWS: dict[str, dict] = {
    "ollama-default": {"num_parallel": rules.DEFAULT_NUM_PARALLEL, "max_queue": rules.DEFAULT_MAX_QUEUE},
    "ollama-tuned": {"num_parallel": None, "max_queue": None},
}


@dataclass(eq=False)
class _Runner:
    """A loaded (or loading) model: ``runnerRef``."""

    model: str
    size: int
    parallel: int
    session: float  # sessionDuration: keep_alive; set to 0 when chosen for eviction
    alloc: dict[int, int] = field(default_factory=dict)  # GPU -> bytes of this model on it
    ready: bool = False
    refs: int = 0  # refCount: requests holding it (waiting for it to load, for a slot, or running)
    timer: int = 0  # generation of the armed expiry timer; a stale timer does nothing
    executing: int = 0
    slot_queue: deque = field(default_factory=deque)
    ready_waiters: list = field(default_factory=list)


class OllamaSim:
    """One Ollama server with ``gpus`` GPUs of ``trace.memory`` bytes; each trace job is one request.

    Each behaviour, with the function of ``server/sched.go`` it comes from:

    - **A request for a loaded model goes straight to its runner** (``getRunner`` ->
      ``useLoadedRunner``), whatever is pending; it joins a loading runner and waits for it.
    - **Otherwise it is queued** in ``pendingReqCh``, which holds ``max_queue`` requests; past that
      it is refused at once (``ErrMaxQueue``, HTTP 503): a failed job, counted in ``refused``.
    - **One loop takes the queue in FIFO order** (``processPending``) and works on its head until
      the head runs: if the head's model got loaded meanwhile it joins it; else it loads it if
      fewer than ``max_loaded`` models are loaded and the model fits, else it evicts one and
      waits for that unload, then tries again. **A load blocks the loop until the model runs**
      (``load`` holds the runner's ``refMu`` until ``WaitUntilRunning``, and the next head's
      ``updateFreeSpace`` / ``needsReload`` / ``findRunnerToUnload`` take that lock): one load at a
      time, and the head holds up everything behind it.
    - **Fits** (``load`` with ``requireFull``; placement by ``selectLlamaServerPlacement``): with
      other models loaded, the model's size must be at most 80% of the free memory; on several
      GPUs it goes on the single GPU with the most free memory where it fits so, else over all of
      them in proportion to their free memory. With nothing loaded it loads (a model larger than
      all the memory fails here: the sim engine cannot offload to the CPU).
    - **Eviction** (``findRunnerToUnload``): runners sorted by ``ByDurationAndName`` (keep_alive,
      then blob path), the first idle one; if none is idle the first anyway. Its keep_alive is
      set to 0 and it unloads when its last request ends; requests for it keep joining it while
      it drains (``getRunner`` still finds it), and a request that sets keep_alive gives it back
      a keep_alive (``useLoadedRunner``), so it then unloads only when that expires.
    - **Unloading waits for memory to show as free** (``waitForVRAMRecovery``, run by
      ``processCompleted`` before it reports the unload): ``vram_recovery_s`` after each unload,
      one unload at a time; the loop waits for that report. The default, 0.25 s, is the first
      250 ms poll seeing the memory back, as with the sim engine; Ollama notes 0.5-1.5 s on real
      GPUs and gives up after 5 s.
    - **Keep_alive** (``processCompleted``): a runner whose last request ends unloads after its
      keep_alive (at once when 0). ``keep_alive_s`` is ``OLLAMA_KEEP_ALIVE``, given to a model
      when it loads; ``client_keep_alive`` is the keep_alive every request sets (None: requests
      set none, as the official clients by default).

    Args:
        num_parallel: ``OLLAMA_NUM_PARALLEL`` (default 1); None: each model's own ``parallel``.
        max_queue: ``OLLAMA_MAX_QUEUE`` (default 512); None: unbounded.
        max_loaded_models: ``OLLAMA_MAX_LOADED_MODELS``; 0 (default): 3 per GPU.

    Not modelled: requests cancelled by their client, reloads for other options (every request of
    a trace has the same), layers offloaded to the CPU, KV-cache growth of the estimate with
    ``num_parallel`` (the model's size stands for the whole estimate, which favours the tuned
    row), and ``processCompleted`` holding back request ends while it waits for memory.
    """

    def __init__(self, trace: Trace, *, num_parallel: int | None = rules.DEFAULT_NUM_PARALLEL,
                 max_queue: int | None = rules.DEFAULT_MAX_QUEUE, max_loaded_models: int = 0, gpus: int = 1,
                 keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, client_keep_alive: float | None = None,
                 vram_recovery_s: float = rules.VRAM_POLL_S, name: str = "ollama-default"):
        if trace.nodes != 1:
            raise ValueError("the Ollama baseline models one node (one Ollama server)")
        if gpus < 1:
            raise ValueError(f"gpus must be at least 1, not {gpus}")
        if num_parallel is not None and num_parallel < 1:
            raise ValueError(f"num_parallel must be at least 1, not {num_parallel}")
        self.trace = trace
        self.specs = trace.models
        self.gpus = gpus
        self.num_parallel = num_parallel
        self.max_queue = math.inf if max_queue is None else max_queue
        self.max_loaded = rules.OllamaEnv(max_loaded_models=max_loaded_models).max_loaded(gpus)
        self.keep_alive = keep_alive_s
        self.client_keep_alive = client_keep_alive
        self.recovery = min(vram_recovery_s, rules.VRAM_RECOVERY_TIMEOUT_S)
        self.runners: dict[str, _Runner] = {}  # s.loaded
        self.pending: deque[TraceJob] = deque()  # pendingReqCh
        self.head: TraceJob | None = None  # the request processPending works on
        self.waiting_for: str | None = None  # "load" or "unload": what processPending is blocked on
        self.unloads_busy_until = 0.0  # processCompleted reports one unload at a time
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.out = Outcome(name, trace.name, nodes=gpus)
        self.log: list[tuple[float, str, str]] = []  # (time, "load" | "unload" | "refuse", model)

    def run(self) -> Outcome:
        """Play the whole trace; the outcome counts every job (answered, failed or refused)."""
        jobs = self.trace.jobs
        if jobs:
            self.out.first_arrival = jobs[0].t
        for job in jobs:
            self._at(job.t, "arrive", job)
        while self.events:
            self.now, _, kind, data = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(data)
        self.out.failed += len(jobs) - self.out.settled  # stranded forever: none expected
        return self.out

    def _at(self, t: float, kind: str, data: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    # --- getRunner and the runners ---------------------------------------------------------
    def _on_arrive(self, job: TraceJob) -> None:
        runner = self.runners.get(job.model)
        if runner is not None:
            self._use(runner, job)
        elif len(self.pending) >= self.max_queue:
            self.log.append((self.now, "refuse", job.model))
            self.out.failed += 1
            self.out.refused += 1
        else:
            self.pending.append(job)
            self._process_pending()

    def _use(self, runner: _Runner, job: TraceJob) -> None:
        """``useLoadedRunner``: hold the runner, stop its expiry timer, take its keep_alive if set."""
        runner.refs += 1
        runner.timer += 1
        if self.client_keep_alive is not None:
            runner.session = self.client_keep_alive
        if runner.ready:
            self._take_slot(runner, job)
        else:
            runner.ready_waiters.append(job)

    def _take_slot(self, runner: _Runner, job: TraceJob) -> None:
        if runner.executing < runner.parallel:
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
        runner.refs -= 1
        if runner.refs == 0:
            self._idle(runner)

    def _idle(self, runner: _Runner) -> None:
        """``processCompleted`` on the last request's end: unload now if keep_alive is 0, else arm the timer."""
        runner.timer += 1
        if runner.session <= 0:
            self._unload(runner)
        elif math.isfinite(runner.session):
            self._at(self.now + runner.session, "expire", (runner, runner.timer))

    def _on_expire(self, data: tuple[_Runner, int]) -> None:
        runner, generation = data
        if generation == runner.timer and runner.refs == 0:
            self._unload(runner)

    def _unload(self, runner: _Runner) -> None:
        """Free the runner's memory now; report the unload once memory shows as free."""
        if self.runners.get(runner.model) is not runner:
            return
        del self.runners[runner.model]
        self.log.append((self.now, "unload", runner.model))
        self.unloads_busy_until = max(self.now, self.unloads_busy_until) + self.recovery
        self._at(self.unloads_busy_until, "unloaded", runner)

    def _on_unloaded(self, _runner: _Runner) -> None:
        if self.waiting_for == "unload":  # unloadedCh; with nothing waiting the report is dropped
            self.waiting_for = None
            self._process_pending()

    # --- processPending ---------------------------------------------------------------------
    def _process_pending(self) -> None:
        while self.waiting_for is None:
            if self.head is None:
                if not self.pending:
                    return
                self.head = self.pending.popleft()
            if self._schedule(self.head):
                self.head = None

    def _schedule(self, job: TraceJob) -> bool:
        """One pass of processPending's inner loop on the head; True once the head is placed."""
        spec = self.specs[job.model]
        runner = self.runners.get(job.model)
        if runner is not None:
            self._use(runner, job)
            return True
        if len(self.runners) < self.max_loaded:
            if not self.runners and spec.size > self.trace.memory * self.gpus:
                self.out.failed += 1  # too large even with the server to itself
                return True
            alloc = self._place(spec.size)
            if alloc is not None:
                self._load(job, alloc)
                self.waiting_for = "load"
                return True
        self._evict()
        self.waiting_for = "unload"
        return False

    def _place(self, size: int) -> dict[int, int] | None:
        """Where a model of ``size`` bytes loads now (GPU -> bytes), or None if it does not fit."""
        free = {g: self.trace.memory - sum(r.alloc.get(g, 0) for r in self.runners.values()) for g in range(self.gpus)}
        others = bool(self.runners)
        if self.gpus == 1:  # selectLlamaServerPlacement passes one GPU through; load() tests the fit
            return {0: size} if size <= free[0] and rules.fits(size, free[0], others) else None
        # bestSingleGPUFit: the GPU with the most free memory among those where it takes <= 80%
        singles = [g for g in free if size <= free[g] * rules.FIT_FRACTION]
        if singles:
            best = max(singles, key=lambda g: (free[g], -g))
            return {best: size}
        room = sum(free.values())  # else the whole group, and load()'s fit test over all of it
        if size > room or not rules.fits(size, room, others):
            return None
        alloc = {g: size * f // room for g, f in free.items()}
        alloc[max(free, key=lambda g: (free[g], -g))] += size - sum(alloc.values())
        return alloc

    def _evict(self) -> None:
        """``findRunnerToUnload`` and the expiry that follows: the first idle runner by keep_alive
        and blob path, else the first; its keep_alive becomes 0 and it unloads once drained."""
        ordered = sorted(self.runners.values(), key=lambda r: rules.unload_order_key(r.session, r.model))
        victim = next((r for r in ordered if r.refs == 0), ordered[0])
        victim.session = 0.0
        victim.timer += 1
        if victim.refs == 0:
            self._unload(victim)

    def _load(self, job: TraceJob, alloc: dict[int, int]) -> None:
        spec = self.specs[job.model]
        parallel = spec.parallel if self.num_parallel is None else self.num_parallel
        if spec.kind == "embed":
            parallel = 1  # load(): embedding models always run one request at a time
        runner = _Runner(job.model, spec.size, parallel, self.keep_alive, alloc=alloc)
        self.runners[job.model] = runner
        self.log.append((self.now, "load", job.model))
        self._use(runner, job)
        self.out.loads += 1
        self.out.load_seconds += load_s(spec)
        self._at(self.now + load_s(spec), "loaded", runner)

    def _on_loaded(self, runner: _Runner) -> None:
        runner.ready = True
        waiters, runner.ready_waiters = runner.ready_waiters, []
        for job in waiters:
            self._take_slot(runner, job)
        if self.waiting_for == "load":
            self.waiting_for = None
            self._process_pending()


def simulate_ollama(trace: Trace, *, name: str = "ollama-default", **settings) -> Outcome:
    """Run ``trace`` as direct client requests against one Ollama server (see :class:`OllamaSim`)."""
    return OllamaSim(trace, name=name, **settings).run()


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
