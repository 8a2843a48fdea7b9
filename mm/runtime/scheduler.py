"""Which models are resident: the memory budget, loads and unloads, keep_alive expiry, evict modes.

Requests ask :meth:`Scheduler.acquire` for a model; it answers with a ready :class:`Runner` on
which the request holds a *lease* until :meth:`Scheduler.release`. A model whose last lease ends
expires ``keep_alive`` seconds later (0: at once; forever: never), as in Ollama.

Requests that need a load (or a reload, when ``num_ctx`` differs from the resident one) queue in
FIFO order and are placed by one loop task:

* ``evict="none"``: a load that does not fit the free memory fails with :class:`OutOfMemory`;
  nothing is ever evicted to make room. Loads of different models may run concurrently.
* ``evict="ollama"``: Ollama's scheduler as its ``server/sched.go`` has it (the rules and the
  ``OLLAMA_*`` settings are in :mod:`mm.runtime.ollama_rules`; ``bench.sim_baselines.OllamaSim``
  simulates the same): a request for a loaded (or loading) model goes straight to it
  (``getRunner``); the others queue, at most ``OLLAMA_MAX_QUEUE``, past which they are refused
  with :class:`ServerBusy` (503). One loop takes the queue in order (``processPending``): it loads
  the head's model if fewer than ``OLLAMA_MAX_LOADED_MODELS`` are loaded and it fits in 80% of
  the free memory (with nothing loaded, in the budget), and waits until it is ready before it
  looks at the next; else it picks a victim (``findRunnerToUnload``: by keep_alive then blob path,
  the first idle one, else the first), sets its keep_alive to 0 (it unloads once its requests,
  and those that keep joining it, end) and waits for an unload, which is reported once the
  freed memory shows (``waitForVRAMRecovery``: polled every 250 ms, at most 5 s). Each model
  runs ``OLLAMA_NUM_PARALLEL`` requests at once (default 1; embedding models 1); a request that
  sets no keep_alive leaves a loaded model's as it is, and a new one gets ``OLLAMA_KEEP_ALIVE``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from mm.runtime import ollama_rules
from mm.runtime.catalog import ModelSpec
from mm.runtime.durations import DEFAULT_KEEP_ALIVE, format_duration
from mm.runtime.engines.base import Engine
from mm.runtime.errors import EngineError, OutOfMemory, RuntimeAPIError, ServerBusy, human_bytes
from mm.runtime.slots import FifoSlots

log = logging.getLogger("mm.runtime")

LOADING, READY, UNLOADING = "loading", "ready", "unloading"
EVICT_MODES = ("none", "ollama")


@dataclass(eq=False)
class Runner:
    """One resident (or loading) model instance."""

    spec: ModelSpec
    engine: Engine
    num_ctx: int
    size: int
    slots: FifoSlots
    ready: asyncio.Future[Any]
    gone: asyncio.Future[None]
    state: str = LOADING
    loaded: Any = None
    leases: int = 0
    keep_alive: float = DEFAULT_KEEP_ALIVE
    idle_since: float | None = None
    draining: bool = False  # a queued request needs it reloaded with another num_ctx
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def expires_in(self) -> float:
        """Seconds until keep_alive expiry (counted from the end of the last request)."""
        if self.leases or self.idle_since is None:
            return self.keep_alive
        return max(0.0, self.keep_alive - (time.monotonic() - self.idle_since))


@dataclass(eq=False)
class _Pending:
    spec: ModelSpec
    num_ctx: int
    keep_alive: float | None
    fut: asyncio.Future[Runner]


_DONE, _WAIT = "done", "wait"


class Scheduler:
    """Residency of models within ``budget`` bytes; see the module docstring."""

    def __init__(self, engines: dict[str, Engine], budget: int, evict: str = "none",
                 ollama: ollama_rules.OllamaEnv | None = None):
        """``ollama``: the ``OLLAMA_*`` settings of ``evict="ollama"`` (default: read from the environment)."""
        if evict not in EVICT_MODES:
            raise ValueError(f"evict must be one of {EVICT_MODES}, got {evict!r}")
        self.engines = engines
        self.budget = budget
        self.evict = evict
        self.ollama = (ollama or ollama_rules.OllamaEnv.from_env()) if evict == "ollama" else None
        self.default_keep_alive = self.ollama.keep_alive_s if self.ollama else DEFAULT_KEEP_ALIVE
        self._head: _Pending | None = None  # ollama: the request the placement loop works on
        self._unloaded = asyncio.Event()  # ollama: an unload finished and its memory shows free
        self._unload_lock = asyncio.Lock()  # ollama: unloads are reported one at a time
        self._runners: dict[str, Runner] = {}
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- public surface ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the placement loop (call from inside the event loop)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def used(self) -> int:
        """Bytes held by loading, resident and unloading models."""
        return sum(r.size for r in self._runners.values())

    def resident(self) -> list[Runner]:
        """Models loading or loaded (what ``/api/ps`` lists)."""
        return [r for r in self._runners.values() if r.state in (LOADING, READY)]

    def waiting_for_load(self) -> dict[str, int]:
        """Requests queued for a model to be loaded (or placed), per model name (``GET /mm/queue``)."""
        waiting: dict[str, int] = {}
        for pending in self._pending:
            if not pending.fut.done():
                waiting[pending.spec.name] = waiting.get(pending.spec.name, 0) + 1
        return waiting

    async def acquire(self, spec: ModelSpec, num_ctx: int, keep_alive: float | None) -> Runner:
        """Lease a ready runner for ``spec`` with ``num_ctx``, loading (or reloading) it if needed.

        ``keep_alive`` None (the request set none) keeps a loaded model's keep_alive as it is.

        Raises:
            OutOfMemory: the load does not fit (and, with ``evict="none"``, nothing is evicted).
            EngineError: the engine failed to load the model.
            ServerBusy: ``evict="ollama"`` and ``OLLAMA_MAX_QUEUE`` requests already wait.
        """
        runner = self._runners.get(spec.name)
        if runner and self._usable(runner, num_ctx) and (self.ollama or not self._pending):
            self._lease(runner, keep_alive)
        else:
            if self.ollama and len(self._pending) - (self._head is not None) >= self.ollama.max_queue:
                raise ServerBusy(ollama_rules.SERVER_BUSY)
            pending = _Pending(spec, num_ctx, keep_alive, asyncio.get_running_loop().create_future())
            self._pending.append(pending)
            self._wake.set()
            try:
                runner = await pending.fut
            except asyncio.CancelledError:
                if pending.fut.done() and not pending.fut.cancelled() and pending.fut.exception() is None:
                    self.release(pending.fut.result())
                self._wake.set()  # it may have been the head of the queue
                raise
        try:
            await asyncio.shield(runner.ready)
        except BaseException:
            self.release(runner)
            raise
        return runner

    def release(self, runner: Runner) -> None:
        """End one lease; the last one starts the keep_alive countdown."""
        if runner.leases <= 0:
            return
        runner.leases -= 1
        if runner.leases == 0:
            runner.idle_since = time.monotonic()
            if runner.state == READY:
                self._arm_expiry(runner)
            self._wake.set()

    async def unload_model(self, name: str) -> None:
        """``keep_alive: 0`` with nothing to generate: unload now, or when its requests end."""
        runner = self._runners.get(name)
        if runner is None:
            return
        runner.keep_alive = 0.0
        if runner.leases == 0:
            await self._unload(runner, "keep_alive 0")

    async def close(self) -> None:
        """Stop placing, fail queued requests and unload every model."""
        if self._loop_task:
            self._loop_task.cancel()
        for pending in self._pending:
            if not pending.fut.done():
                pending.fut.set_exception(EngineError("runtime is shutting down"))
        self._pending.clear()
        for runner in list(self._runners.values()):
            await self._unload_now(runner, "shutdown")
        for task in list(self._tasks):
            task.cancel()

    # -- leases and expiry ------------------------------------------------------------------

    @staticmethod
    def _usable(runner: Runner, num_ctx: int) -> bool:
        return runner.state in (LOADING, READY) and not runner.draining and runner.num_ctx == num_ctx

    def _lease(self, runner: Runner, keep_alive: float | None) -> None:
        runner.leases += 1
        if keep_alive is not None:
            runner.keep_alive = keep_alive
        runner.idle_since = None
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None

    def _arm_expiry(self, runner: Runner) -> None:
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        if math.isinf(runner.keep_alive):
            return
        if runner.keep_alive <= 0:
            self._spawn(self._expire(runner))
        else:
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.keep_alive, lambda: self._spawn(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        if runner.leases == 0 and runner.state == READY and self._runners.get(runner.spec.name) is runner:
            await self._unload(runner, f"keep_alive {format_duration(runner.keep_alive)} expired")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- placement loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain()
            except Exception:  # keep placing whatever went wrong with one request
                log.exception("scheduler placement failed")

    async def _drain(self) -> None:
        if self.ollama:
            await self._process_pending()
            return
        blocked: set[str] = set()  # models with an earlier request still waiting: keep their order
        i = 0
        while i < len(self._pending):
            pending = self._pending[i]
            if pending.fut.done():
                del self._pending[i]
                continue
            verdict = _WAIT if pending.spec.name in blocked else await self._place(pending)
            if verdict == _DONE:
                del self._pending[i]
                continue
            blocked.add(pending.spec.name)
            i += 1

    async def _place(self, pending: _Pending) -> str:
        spec = pending.spec
        while not pending.fut.done():
            runner = self._runners.get(spec.name)
            if runner is not None:
                if runner.state == UNLOADING:
                    return _WAIT
                if runner.num_ctx == pending.num_ctx:
                    self._assign(runner, pending)
                    return _DONE
                runner.draining = True
                if runner.leases:
                    return _WAIT
                await self._unload(runner, f"reload with num_ctx {pending.num_ctx}")
                continue
            size = self.engines[spec.engine].estimate_size(spec, pending.num_ctx)
            free = self.budget - self.used()
            if size > free:
                log.debug("oom model=%s needs=%s free=%s", spec.name, human_bytes(size), human_bytes(free))
                pending.fut.set_exception(OutOfMemory(size, free))
                return _DONE
            self._assign(self._new_runner(spec, pending.num_ctx, size), pending)
            return _DONE
        return _DONE

    # -- evict="ollama": processPending -----------------------------------------------------

    async def _process_pending(self) -> None:
        """Work on the head of the queue until it runs, then the next: nothing behind it moves."""
        while self._pending:
            head = self._pending[0]
            if not head.fut.done():
                self._head = head
                try:
                    await self._schedule(head)
                finally:
                    self._head = None
            if self._pending and self._pending[0] is head:  # close() may have emptied the queue
                self._pending.popleft()

    async def _schedule(self, pending: _Pending) -> None:
        """processPending's inner loop: join, load (and wait until ready), or evict and wait."""
        spec, limits = pending.spec, self.ollama
        assert limits is not None
        while not pending.fut.done():
            runner = self._runners.get(spec.name)
            victim: Runner | None = None
            if runner is not None and runner.state == UNLOADING:
                await asyncio.shield(runner.gone)
                continue
            if runner is not None:
                if runner.num_ctx == pending.num_ctx:
                    self._assign(runner, pending)
                    await asyncio.wait({runner.ready})  # needsReload waits on a loading runner's lock
                    return
                runner.draining = True  # needsReload: other options, so unload it first
                victim = runner
            elif len(self._runners) >= limits.max_loaded():
                victim = self._find_runner_to_unload()
            else:
                size = self.engines[spec.engine].estimate_size(spec, pending.num_ctx)
                free = self.budget - self.used()
                others = bool(self._runners)
                if not others and size > self.budget:
                    pending.fut.set_exception(OutOfMemory(size, self.budget))
                    return
                if size <= free and ollama_rules.fits(size, free, others):
                    runner = self._new_runner(spec, pending.num_ctx, size)
                    self._assign(runner, pending)
                    await asyncio.wait({runner.ready})  # load holds the runner's lock until it runs
                    return
                victim = self._find_runner_to_unload()
            if victim is None:  # only unloading runners left: wait for them
                self._unloaded.clear()
                await self._unloaded.wait()
                continue
            await self._expire_now(victim, f"evicted for {spec.name}")

    def _find_runner_to_unload(self) -> Runner | None:
        """``findRunnerToUnload``: by keep_alive then blob path, the first idle runner, else the first."""
        candidates = sorted((r for r in self._runners.values() if r.state in (LOADING, READY)),
                            key=lambda r: ollama_rules.unload_order_key(r.keep_alive, r.spec.name))
        idle = (r for r in candidates if r.state == READY and r.leases == 0)
        return next(idle, candidates[0] if candidates else None)

    async def _expire_now(self, runner: Runner, reason: str) -> None:
        """Set the victim's keep_alive to 0 (it unloads when its requests end) and wait for an unload."""
        self._unloaded.clear()
        runner.keep_alive = 0.0
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        if runner.leases == 0 and runner.state == READY:
            self._spawn(self._unload(runner, reason))
        await self._unloaded.wait()

    async def _memory_shows_free(self, free_before: int, size: int) -> None:
        """``waitForVRAMRecovery``: poll every 250 ms until 75% of ``size`` shows free again, 5 s at most."""
        deadline = time.monotonic() + ollama_rules.VRAM_RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(ollama_rules.VRAM_POLL_S)
            if (self.budget - self.used()) - free_before > ollama_rules.VRAM_RECOVERED * size:
                return

    def _assign(self, runner: Runner, pending: _Pending) -> None:
        if not pending.fut.done():
            self._lease(runner, pending.keep_alive)
            pending.fut.set_result(runner)

    # -- load and unload --------------------------------------------------------------------

    def _new_runner(self, spec: ModelSpec, num_ctx: int, size: int) -> Runner:
        loop = asyncio.get_running_loop()
        ready, gone = loop.create_future(), loop.create_future()
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # mark retrieved
        parallel = spec.parallel
        if self.ollama:  # one OLLAMA_NUM_PARALLEL for every model; embedding models run one at a time
            parallel = 1 if spec.kind == "embed" else self.ollama.num_parallel
        runner = Runner(spec=spec, engine=self.engines[spec.engine], num_ctx=num_ctx, size=size,
                        slots=FifoSlots(parallel), ready=ready, gone=gone, keep_alive=self.default_keep_alive)
        self._runners[spec.name] = runner
        self._spawn(self._load(runner))
        return runner

    async def _load(self, runner: Runner) -> None:
        spec, started = runner.spec, time.monotonic()
        log.debug("load model=%s num_ctx=%d size=%s started", spec.name, runner.num_ctx, human_bytes(runner.size))
        try:
            runner.loaded = await runner.engine.load(spec, runner.num_ctx)
        except Exception as exc:
            log.error("load model=%s failed: %s", spec.name, exc)
            self._forget(runner)
            error = exc if isinstance(exc, RuntimeAPIError) else EngineError(f"failed to load {spec.name}: {exc}")
            runner.ready.set_exception(error)
            return
        runner.size = runner.loaded.size
        if self.used() > self.budget:  # the measured footprint is larger than the estimate
            available = self.budget - (self.used() - runner.size)
            await runner.engine.unload(runner.loaded)
            self._forget(runner)
            log.error("load model=%s measured %s: over budget", spec.name, human_bytes(runner.size))
            runner.ready.set_exception(OutOfMemory(runner.size, available))
            return
        runner.state = READY
        log.info("load model=%s num_ctx=%d size=%s took=%.3fs used=%s/%s", spec.name, runner.num_ctx,
                 human_bytes(runner.size), time.monotonic() - started, human_bytes(self.used()),
                 human_bytes(self.budget))
        runner.ready.set_result(runner)
        if runner.leases == 0:
            runner.idle_since = time.monotonic()
            self._arm_expiry(runner)

    async def _unload(self, runner: Runner, reason: str) -> None:
        if self.ollama:  # processCompleted unloads one runner at a time, each until its memory shows free
            async with self._unload_lock:
                free_before = self.budget - self.used()
                unloaded = await self._unload_now(runner, reason)
                if unloaded:
                    await self._memory_shows_free(free_before, runner.size)
                    self._unloaded.set()
            return
        await self._unload_now(runner, reason)

    async def _unload_now(self, runner: Runner, reason: str) -> bool:
        """Unload ``runner`` (once it has loaded); False if another call did or it is gone."""
        if runner.state == LOADING:
            await asyncio.wait({runner.ready})
        if runner.state == UNLOADING:
            await asyncio.shield(runner.gone)
            return False
        if runner.state != READY or self._runners.get(runner.spec.name) is not runner:
            return False
        runner.state = UNLOADING
        if runner.timer:
            runner.timer.cancel()
        try:
            await runner.engine.unload(runner.loaded)
        except Exception:
            log.exception("unload model=%s failed", runner.spec.name)
        finally:
            runner.loaded = None
            self._forget(runner)
            log.info("unload model=%s reason=%s freed=%s used=%s/%s", runner.spec.name, reason,
                     human_bytes(runner.size), human_bytes(self.used()), human_bytes(self.budget))
        return True

    def _forget(self, runner: Runner) -> None:
        if self._runners.get(runner.spec.name) is runner:
            del self._runners[runner.spec.name]
        if not runner.gone.done():
            runner.gone.set_result(None)
        self._wake.set()
