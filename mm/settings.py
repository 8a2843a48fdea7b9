"""Every mm setting in one place: an ``MM_*`` environment variable, its type, default and doc.

``mm/celeryconfig.py`` and every mm process read these; nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


class SettingsError(ValueError):
    """A setting out of its range, not of its type, or contradicting another; the message names them."""


@dataclass(frozen=True)
class Settings:
    """Typed settings; build with :func:`load` (environment) or directly in tests."""

    redis_url: str = _opt("redis://127.0.0.1:6379/0", "Redis URL: Celery broker, result backend and mm state.")
    runtime_url: str = _opt("http://127.0.0.1:11434", "Ollama-API runtime this node's workers and agent call.")
    node: str = _opt(socket.gethostname(), "Name of this GPU host; its broker queue is mm.node.<node>.")
    memory_budget: int = _opt(0, "Bytes of model memory on this node when NVML is absent (0: use NVML, else 8 GiB).")
    use_nvml: bool = _opt(True, "Read GPU memory from NVML when a GPU is present.")
    gpus: str = _opt("", "GPU indices this node's runtime uses, e.g. 0 or 2,3 (empty: all); one node per GPU.")

    max_prompt_chars: int = _opt(100_000, "Longest prompt (or sum of chat message contents) accepted.")
    max_embed_chars: int = _opt(200_000, "Most characters of input one embed job may carry in all (a list of "
                                         "inputs holds one slot for all of them).")
    max_images: int = _opt(8, "Most images one job may carry.")
    max_image_bytes: int = _opt(20 * 1024 * 1024, "Largest decoded image accepted, in bytes.")
    max_queued_per_key: int = _opt(0, "Most jobs one gateway API key may have queued (not yet started); past it the "
                                      "gateway answers 429 with Retry-After (0: no limit; batches do not count).")
    max_num_predict: int = _opt(4096, "Largest options.num_predict accepted (a model's max_num_predict in the "
                                      "registry overrides it; 0: no ceiling).")

    size_multiplier: float = _opt(1.3, "Estimated resident size = tag size x this, until a load teaches the real size.")
    safety_margin: int = _opt(512 * 1024 * 1024, "Bytes kept free on every node/GPU when placing models.")
    min_residency_s: float = _opt(10.0, "A freshly loaded model is not evicted for this many seconds.")
    aging_s: float = _opt(60.0, "Seconds of waiting that raise a job's weight by one priority class.")
    default_num_ctx: int = _opt(4096, "num_ctx fixed per model so clients cannot force reloads.")
    default_max_parallel: int = _opt(4, "Parallel jobs per resident model unless the registry says otherwise.")
    pinned_models: str = _opt("", "Comma-separated models that are never unloaded.")

    job_time_limit_s: int = _opt(1800, "Hard time limit of one inference job.")
    visibility_timeout_s: int = _opt(3600, "kombu visibility timeout; must exceed job_time_limit_s.")
    result_expires_s: int = _opt(86_400, "Results and job records expire after this many seconds.")
    redis_memory_limit: float = _opt(0.9, "Refuse new jobs once Redis uses this share of its maxmemory, before it "
                                          "refuses writes (0: never refuse).")
    orphan_grace_s: float = _opt(10.0, "A job kombu holds as delivered this long that no live worker runs is "
                                       "requeued (its worker died or lost the broker connection before starting it, "
                                       "or while holding it). Workers start what they take within milliseconds.")
    max_deliveries: int = _opt(3, "A job delivered this many times without finishing is dead-lettered.")
    runtime_retries: int = _opt(3, "Retries of a transient runtime error (connection, 429, 502, 503, 504) per job.")
    runtime_timeout_s: float = _opt(600.0, "HTTP timeout of one runtime call; a call that times out fails its job "
                                           "(it is not retried).")

    lease_ttl_ms: int = _opt(3000, "Leader lease TTL; renewed every third of it.")
    tick_s: float = _opt(0.25, "Leader reconcile interval (it also wakes at once when jobs arrive).")
    heartbeat_s: float = _opt(1.0, "Node and worker state publish interval.")
    state_ttl_s: float = _opt(5.0, "TTL of published node/worker state; a silent node disappears after it.")
    unload_settle_s: float = _opt(5.0, "After an unload, wait up to this long for memory to show as free.")
    worker_slots: int = _opt(4, "Threads of one model-worker (its -c).")

    idle_threshold_s: float = _opt(1800.0, "Beat asks to unload a resident model unused for this many seconds.")
    idle_check_s: float = _opt(600.0, "Seconds between beat's idle-shutdown runs.")
    active_window_s: float = _opt(600.0, "A model used within this many seconds counts as active.")
    activity_report_s: float = _opt(600.0, "Seconds between beat's activity reports (log and event stream).")
    warm_pool: str = _opt("", "Comma-separated models never idle-unloaded (kept warm once resident).")
    metrics_rollup_s: float = _opt(60.0, "Seconds between beat's metrics rollups (minute and hour buckets).")
    metrics_raw_retention_s: int = _opt(3600, "Raw job samples are kept this long (and until their hour is rolled up).")
    metrics_minute_retention_s: int = _opt(48 * 3600, "Per-model minute rollups are kept this long.")
    metrics_hour_retention_s: int = _opt(30 * 86_400, "Per-model hour rollups are kept this long.")
    metrics_raw_max: int = _opt(1_000_000, "Hard cap on stored raw job samples (guards memory while beat is down).")
    quality_fields: str = _opt("prediction_accuracy,drift,inference_time",
                               "Comma-separated fields a quality metric event (mm.record_metric) may carry.")
    quality_retention_s: int = _opt(30 * 86_400, "Quality metric events are kept this long.")
    quality_max_events: int = _opt(100_000, "Most quality events kept per name and version.")
    alert_rules: str = _opt("p95_latency_s > 30 for 5m; error_rate > 0.05; queue_wait_p95_s > 60; "
                            "prediction_accuracy < 0.3",
                            "Alert rules: '<metric> <op> <number> [for <duration>]' separated by ';'.")
    alert_check_s: float = _opt(60.0, "Seconds between beat's alert evaluations.")
    alert_window_s: float = _opt(300.0, "Alert metrics are computed over this many trailing seconds.")
    alert_webhook: str = _opt("", "URL that receives a JSON POST when an alert fires or clears (empty: none).")
    alert_webhook_timeout_s: float = _opt(3.0, "Timeout of one alert webhook POST.")

    gateway_host: str = _opt("127.0.0.1", "Address `mm gateway` listens on.")
    gateway_port: int = _opt(5001, "Port `mm gateway` listens on.")
    gateway_api_keys: str = _opt("", "Comma-separated bearer API keys the gateway requires (empty: no auth).")
    gateway_max_body: int = _opt(32 * 1024 * 1024, "Largest request body the gateway accepts, in bytes (413 past it).")
    gateway_max_json_depth: int = _opt(32, "Deepest JSON nesting the gateway accepts in a request body.")
    gateway_wait_s: float = _opt(1800.0, "How long a synchronous gateway call (infer, non-streaming proxy) "
                                         "waits for its job.")
    gateway_stats_window_s: float = _opt(3600.0, "Trailing window of the gateway's finished-job counts "
                                                 "and status charts.")
    gateway_threads: int = _opt(32, "Threads the gateway runs Redis and Celery calls on.")
    gateway_max_streams: int = _opt(256, "Concurrent streaming responses the gateway relays (one thread each).")
    gateway_url: str = _opt("", "Gateway URL `mm batch` calls (empty: http://MM_GATEWAY_HOST:MM_GATEWAY_PORT).")
    api_key: str = _opt("", "Bearer key `mm batch` sends to the gateway (empty: the first of MM_GATEWAY_API_KEYS).")

    files_dir: str = _opt("mm-files", "Directory of the Batch API's files (inputs, outputs, errors), relative to the "
                                      "gateway's working directory. Gateways that share batches share it.")
    max_file_bytes: int = _opt(200 * 1024 * 1024, "Largest file accepted by POST /v1/files, in bytes (413 past it).")
    batch_max_lines: int = _opt(50_000, "Most requests one batch file may hold.")
    batch_tick_s: float = _opt(1.0, "How often the gateway advances its batches (enqueue, count, finalize, expire).")

    cache_default: bool = _opt(False, "Answer deterministic requests (temperature 0 or a fixed seed, and embeddings) "
                                      "from the result cache unless a request says otherwise (cache=False, "
                                      "X-MM-Cache: off).")
    cache_ttl_s: float = _opt(86_400.0, "A cached result is served for this many seconds after it was stored.")
    cache_max_bytes: int = _opt(256 * 1024 * 1024, "Bytes of cached results kept in Redis; the least recently used "
                                                   "go first past it.")

    log_format: str = _opt("text", "Log lines as readable text, or json: one object per line with component, job_id, "
                                   "model and node (for Loki, ELK).")

    placement: str = _opt("spread", "Where a model goes when it fits on several nodes: spread (most free) or binpack.")
    replica_backlog: int = _opt(8, "Queued jobs per parallel slot of every copy that call for another copy (0: none).")

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.pinned_models.split(",") if m.strip())

    @property
    def longest_job_s(self) -> float:
        """The longest a job can run: the hard limit, or every runtime attempt running up to its timeout plus
        backoff (a timed-out call is not retried, but a 502/503/504 may come as late)."""
        attempts = self.runtime_retries + 1
        return max(self.job_time_limit_s, attempts * self.runtime_timeout_s + 8.0 * attempts)

    def __post_init__(self) -> None:
        found = self.contradictions()
        if found:
            raise SettingsError("; ".join(found))

    def contradictions(self) -> list[str]:
        """Each setting out of its range, or pair of settings that cannot both hold, with the fix."""
        found = []
        if self.log_format not in ("text", "json"):
            found.append(f"MM_LOG_FORMAT must be text or json, not {self.log_format!r}")
        if self.placement not in ("spread", "binpack"):
            found.append(f"MM_PLACEMENT must be spread or binpack, not {self.placement!r}")
        for name in ("worker_slots", "max_deliveries", "lease_ttl_ms"):
            if getattr(self, name) < 1:
                found.append(f"{env_name(name)} must be at least 1, not {getattr(self, name)}")
        for name in ("heartbeat_s", "tick_s", "runtime_timeout_s", "batch_tick_s"):
            if getattr(self, name) <= 0:
                found.append(f"{env_name(name)} must be more than 0, not {getattr(self, name)}")
        if not 0 <= self.redis_memory_limit <= 1:
            found.append(f"MM_REDIS_MEMORY_LIMIT is a share of maxmemory, 0 to 1, not {self.redis_memory_limit}")
        # kombu redelivers an unacked message older than the visibility timeout, even while it runs.
        if self.visibility_timeout_s <= self.longest_job_s:
            found.append(
                f"MM_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed the longest job "
                f"({self.longest_job_s:.0f}s: MM_JOB_TIME_LIMIT_S, or (MM_RUNTIME_RETRIES + 1) x "
                f"MM_RUNTIME_TIMEOUT_S plus backoff), or long jobs run twice at once"
            )
        # State published every heartbeat must outlive the gap to the next publish, with one miss to spare.
        if self.state_ttl_s < 2 * self.heartbeat_s:
            found.append(
                f"MM_STATE_TTL_S ({self.state_ttl_s}) must be at least twice MM_HEARTBEAT_S ({self.heartbeat_s}): "
                f"node and worker state would expire between publishes, and the leader would take live "
                f"workers for dead and requeue their jobs"
            )
        if self.memory_budget and self.memory_budget <= self.safety_margin:
            found.append(
                f"MM_MEMORY_BUDGET ({self.memory_budget}) must exceed MM_SAFETY_MARGIN ({self.safety_margin}), "
                f"which is kept free on every node: no model could ever load"
            )
        if self.orphan_grace_s >= self.visibility_timeout_s:
            found.append(
                f"MM_ORPHAN_GRACE_S ({self.orphan_grace_s}) must be below MM_VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}): stranded jobs would wait for kombu's timeout instead"
            )
        return found


def env_name(name: str) -> str:
    return "MM_" + name.upper()


def _parse(raw: str, typ: Any, name: str) -> Any:
    try:
        if typ in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if typ in (int, "int"):
            return int(raw.replace("_", ""))
        if typ in (float, "float"):
            return float(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{env_name(name)}={raw!r} is not a valid {typ}") from None


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``MM_*`` variables in ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = _parse(raw, f.type, f.name)
    values.update(overrides)
    return Settings(**values)


def describe() -> list[tuple[str, str, Any, str]]:
    """(variable, type, default, doc) for every setting, for docs/settings.md and ``mm config``."""
    return [
        (env_name(f.name), str(f.type), f.default, f.metadata["doc"])
        for f in dataclasses.fields(Settings)
    ]


_current: Settings | None = None


def get() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _current
    if _current is None:
        _current = load()
    return _current
