"""Ollama's scheduling rules, as numbers and pure functions: shared by ``mm runtime --evict ollama``
(:mod:`mm.runtime.scheduler`) and the benchmark's simulated Ollama (:mod:`bench.sim_baselines`).

Read from Ollama's ``server/sched.go`` and ``envconfig/config.go`` at v0.33.0-rc2 (commit
fb30760, 2026-08-21); the behaviours cited hold since v0.11.5, where ``getRunner`` began to hand
requests for a loaded model straight to its runner:

- ``envconfig.NumParallel`` (``OLLAMA_NUM_PARALLEL``) defaults to 1 request at a time per model;
  ``load`` forces 1 for embedding-only models.
- ``envconfig.MaxRunners`` (``OLLAMA_MAX_LOADED_MODELS``) defaults to 0, which ``processPending``
  turns into ``defaultModelsPerGPU`` (3) x the GPUs it sees; past it a load evicts, whatever
  memory is free.
- ``envconfig.MaxQueue`` (``OLLAMA_MAX_QUEUE``) defaults to 512: the capacity of ``pendingReqCh``;
  ``getRunner`` answers ``ErrMaxQueue`` ("server busy", HTTP 503) at once when it is full.
- ``envconfig.KeepAlive`` (``OLLAMA_KEEP_ALIVE``) defaults to 5 minutes, for requests that set
  no ``keep_alive``; a request that sets one overwrites its runner's (``useLoadedRunner``).
- The fits test (``load`` with ``requireFull``, when other models are loaded): the estimate must
  be at most 80% of the free memory, else a model is evicted. With nothing loaded the model is
  loaded whatever the estimate (Ollama would offload layers to the CPU).
- ``findRunnerToUnload`` sorts the loaded runners with ``ByDurationAndName`` (keep_alive, then
  the model's blob path, ``.../blobs/sha256-<digest>``) and takes the first idle one, else the
  first anyway.
- ``waitForVRAMRecovery``: after an unload the scheduler polls free memory every 250 ms until 75%
  of the runner's memory shows as free, for at most 5 s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_NUM_PARALLEL = 1
DEFAULT_MAX_QUEUE = 512
DEFAULT_MODELS_PER_GPU = 3
DEFAULT_KEEP_ALIVE_S = 300.0
FIT_FRACTION = 0.8  # load(): predicted > freeMemory*80/100 means evict first
VRAM_POLL_S = 0.25  # waitForVRAMRecovery's ticker
VRAM_RECOVERED = 0.75  # ... done once this share of the runner's memory shows as free
VRAM_RECOVERY_TIMEOUT_S = 5.0  # ... or after this long (Scheduler.waitForRecovery)

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # ErrMaxQueue


def blob_path(model: str) -> str:
    """A stand-in for the model's blob path, the name ``ByDurationAndName`` sorts by.

    Ollama's ``modelPath`` is ``<models>/blobs/sha256-<digest of the GGUF file>``: an order fixed
    per model but unrelated to its name or popularity. The digest of the name stands in for it.
    """
    return "sha256-" + hashlib.sha256(model.encode()).hexdigest()


def unload_order_key(keep_alive_s: float, model: str) -> tuple[float, str]:
    """``ByDurationAndName``: shorter keep_alive first (0 for a runner already being evicted), then blob path."""
    return (keep_alive_s, blob_path(model))


def fits(size: int, free: int, others_loaded: bool) -> bool:
    """``load``'s pre-flight test: with other models loaded, ``size`` within 80% of ``free``."""
    return size <= free * FIT_FRACTION if others_loaded else True


def _uint(env: Mapping[str, str], key: str, default: int) -> int:
    """``envconfig.Uint``: a non-negative integer, the default when unset or unparsable."""
    try:
        value = int(env.get(key, "").strip())
    except ValueError:
        return default
    return value if value >= 0 else default


def _keep_alive(env: Mapping[str, str]) -> float:
    """``envconfig.KeepAlive``: a Go duration or seconds; negative means forever."""
    from mm.runtime.durations import parse_keep_alive

    raw = env.get("OLLAMA_KEEP_ALIVE", "").strip()
    if not raw:
        return DEFAULT_KEEP_ALIVE_S
    try:
        return parse_keep_alive(raw)
    except ValueError:
        return DEFAULT_KEEP_ALIVE_S


@dataclass(frozen=True)
class OllamaEnv:
    """The ``OLLAMA_*`` settings the scheduler reads, with Ollama's defaults.

    Attributes:
        num_parallel: requests a model serves at once (``OLLAMA_NUM_PARALLEL``, default 1).
        max_loaded_models: loaded models at most (``OLLAMA_MAX_LOADED_MODELS``; 0: 3 per GPU).
        max_queue: requests waiting for a load at most (``OLLAMA_MAX_QUEUE``, default 512).
        keep_alive_s: how long an idle model stays when requests set no keep_alive
            (``OLLAMA_KEEP_ALIVE``, default 5 min; ``math.inf`` for forever).
    """

    num_parallel: int = DEFAULT_NUM_PARALLEL
    max_loaded_models: int = 0
    max_queue: int = DEFAULT_MAX_QUEUE
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OllamaEnv:
        """Read the settings from ``env`` (default: this process's environment), as Ollama does."""
        env = os.environ if env is None else env
        return cls(num_parallel=max(1, _uint(env, "OLLAMA_NUM_PARALLEL", DEFAULT_NUM_PARALLEL)),
                   max_loaded_models=_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0),
                   max_queue=_uint(env, "OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE),
                   keep_alive_s=_keep_alive(env))

    def max_loaded(self, gpus: int = 1) -> int:
        """The cap on loaded models: the setting, or 3 per GPU when it is 0."""
        return self.max_loaded_models or DEFAULT_MODELS_PER_GPU * max(gpus, 1)
