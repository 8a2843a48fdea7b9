"""Every Redis key and queue name mm uses; nothing else spells one out."""

from __future__ import annotations

PREFIX = "mm"

# Celery priority on Redis: 0 is served first. kombu puts each priority step in its own list; mm
# keeps kombu's default steps and separator so that any stock Celery client lands on lists mm reads.
PRIORITY_STEPS: list[int] = [0, 3, 6, 9]
PRIORITY_SEP = "\x06\x16"
# mm's three classes and the Celery priority each is sent with.
PRIORITIES: dict[str, int] = {"high": 0, "normal": 3, "low": 6}
# The class of each step: Celery priorities 0-2 are high, 3-5 normal, 6-9 low.
PRIORITY_NAMES: dict[int, str] = {0: "high", 3: "normal", 6: "low", 9: "low"}


def priority_class(priority: int | None) -> str:
    """The class of a Celery priority (0-9, 0 first); a message without one counts as normal."""
    return "normal" if priority is None else PRIORITY_NAMES[priority_step(priority)]


# Where a job sent without a queue lands: mm's own default queue, or Celery's for a stock client.
# Every gpu-broker consumes both and forwards such jobs to their model's queue.
DEFAULT_QUEUE = "mm.default"
INTAKE_QUEUES = (DEFAULT_QUEUE, "celery")

BROKER_LEASE = "mm:lock:broker"
FENCE = "mm:fence"
WAKE = "mm:wake"
MODELS = "mm:models"
NODES = "mm:nodes"
# Nodes whose state expired; when one publishes again the leader reconciles it.
LOST_NODES = "mm:nodes:lost"
WORKER_LOST_AT = "mm:workers:lost_at"  # when the leader last found a model-worker gone (epoch seconds)
WORKERS = "mm:workers"
ACTIVITY = "mm:activity"
EVENTS = "mm:events"
DEAD_LETTERS = "mm:deadletters"
# node|model -> reason: unloads asked for by beat (idle shutdown) or an operator, run by the leader.
UNLOAD_REQUESTS = "mm:unload:requests"
# op id -> {op, model, at}: pulls and deletes asked for (gateway, CLI), run by the leader.
MODEL_OP_REQUESTS = "mm:modelops:requests"


def model_queue(model: str) -> str:
    """The Celery queue holding jobs for ``model``."""
    return f"mm.model.{model}"


def model_from_queue(queue: str) -> str | None:
    return queue[len("mm.model."):] if queue.startswith("mm.model.") else None


def priority_step(priority: int | None) -> int:
    """The step kombu files a Celery priority (0-9) under: the largest step not above it."""
    clamped = min(max(int(priority or 0), 0), 9)
    return max(s for s in PRIORITY_STEPS if s <= clamped)


def priority_list(model: str, priority: int) -> str:
    """The Redis list kombu uses for ``model``'s queue at ``priority`` (a step, or any 0-9)."""
    queue, step = model_queue(model), priority_step(priority)
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def node_queue(node: str) -> str:
    """The queue of one GPU host's broker (node agent)."""
    return f"mm.node.{node}"


def idle_queue(hostname: str) -> str:
    """A model-worker's own queue while it is bound to no model."""
    return f"mm.idle.{hostname}"


def bell(queue: str) -> str:
    """A queue's bell list: mm's publishers push to it after each message, and an idle consumer waits
    on it (mm.broker_transport), since the script that takes a message cannot block."""
    return f"mm:bell:{queue}"


def node_state(node: str) -> str:
    return f"mm:node:{node}"


def node_fence_seen(node: str) -> str:
    return f"mm:fence:seen:{node}"


def unloading(node: str, model: str) -> str:
    """Set while ``model`` is being unloaded from ``node``: workers must not start jobs on it."""
    return f"mm:unloading:{node}:{model}"


def worker_state(hostname: str) -> str:
    return f"mm:worker:{hostname}"


def worker_inflight(hostname: str) -> str:
    """The ids of the jobs a model-worker is running."""
    return f"mm:inflight:{hostname}"


def job_stream(job_id: str) -> str:
    """The Redis stream of a streaming job's chunks."""
    return f"mm:stream:{job_id}"


def model_op_stream(op_id: str) -> str:
    """The Redis stream of one pull's or delete's progress and outcome."""
    return f"mm:modelop:{op_id}"


def job(job_id: str) -> str:
    return f"mm:job:{job_id}"


def setup_problem(hostname: str) -> str:
    """Why the Celery process ``hostname`` refused to start (how it was started is wrong for its role)."""
    return f"mm:setup:problem:{hostname}"


SETUP_PROBLEMS = "mm:setup:problem:*"


def cancel(job_id: str) -> str:
    """Set (with the job record's TTL) once the job is cancelled: a worker ends it without running it,
    or stops it if it runs. Its value is the reason."""
    return f"mm:cancel:{job_id}"


# Sorted set of the ids of jobs submitted with a deadline, scored by the epoch second by which each
# must start (mm.deadlines): the leader ends the queued ones past it ``expired``.
DEADLINES = "mm:deadlines"


# The field of a job's record (mm:job:<id>) that counts the times a worker started it.
DELIVERIES_FIELD = "deliveries"


# --- beat: periodic jobs, activity, metrics, quality metrics and alerts -----------------------
# The queue beat sends its periodic tasks to; the gpu-broker consumes it besides its node queue.
BEAT_QUEUE = "mm.beat"
# Stream of periodic runs actually done (task, slot, host): one per task and slot.
BEAT_RUNS = "mm:beat:runs"
# task -> runs skipped because another beat's message for the same slot ran first.
BEAT_SKIPPED = "mm:beat:skipped"
# Stream of raw job samples (one per finished job); the entry id is the finishing time.
METRICS_RAW = "mm:metrics:raw"
# Models with rollups; resolution -> next bucket start not yet rolled up.
METRICS_MODELS = "mm:metrics:models"
METRICS_WATERMARKS = "mm:metrics:watermarks"
# Series (name|version) with quality metric events.
QUALITY_SERIES = "mm:quality:series"
# Stream of alert transitions (firing, cleared); hash of alerts pending or firing now.
ALERTS = "mm:alerts"
ALERT_STATE = "mm:alerts:state"


def beat_claim(task: str, slot: int) -> str:
    """Claimed (SET NX) by the one run of periodic ``task`` in schedule slot ``slot``."""
    return f"mm:beat:claim:{task}:{slot}"


def metrics_rollup(resolution: str, model: str) -> str:
    """Sorted set of ``model``'s rollups at ``resolution`` ("minute" or "hour"), scored by bucket start."""
    return f"mm:metrics:{resolution}:{model}"


def quality_series(name: str, version: str) -> str:
    """Sorted set of quality metric events of one model name and version, scored by event time."""
    return f"mm:quality:{name}|{version}"


# --- gateway ----------------------------------------------------------------------------------
# model -> epoch seconds before which the gateway's history view hides that model's records
# (DELETE /api/models/<name>/history); the event stream and metrics are left untouched.
GATEWAY_HISTORY_CLEARED = "mm:gateway:history:cleared"


def gateway_queued(key_id: str) -> str:
    """Sorted set of the jobs one gateway API key submitted that may still be queued, scored by
    submission time; ``key_id`` is a short hash of the key, never the key (MM_MAX_QUEUED_PER_KEY)."""
    return f"mm:gateway:queued:{key_id}"


# --- the Batch API ----------------------------------------------------------------------------
# Sorted set of batch ids, scored by creation time.
BATCHES = "mm:batches"
# Set of the batches not final yet: what the gateways advance.
BATCHES_LIVE = "mm:batches:live"


def batch(batch_id: str) -> str:
    """Hash of one batch: its OpenAI fields, status, times and how far its lines are enqueued."""
    return f"mm:batch:{batch_id}"


def batch_ended(batch_id: str, outcome: str) -> str:
    """Set of the batch's job ids that ended with ``outcome`` (completed, failed or cancelled)."""
    return f"mm:batch:{batch_id}:{outcome}"


def batch_cancelled(batch_id: str) -> str:
    """Exists once the batch is being cancelled or expired: workers end its jobs without running them."""
    return f"mm:batch:{batch_id}:stop"


def batch_lock(batch_id: str) -> str:
    """Held (SET NX PX) by the one gateway advancing the batch now."""
    return f"mm:batch:{batch_id}:lock"


# --- the result cache (mm.result_cache) ----------------------------------------------------------
# Sorted set of cached entries' keys scored by last use (ms), the least recently used first.
CACHE_LRU = "mm:cache:lru"
# Sorted set of cached entries' keys scored by expiry (ms): entries whose TTL ran out are swept from it.
CACHE_EXPIRY = "mm:cache:expiry"
# Hash of cached entries' keys -> bytes counted; the counter of their sum.
CACHE_SIZES = "mm:cache:sizes"
CACHE_BYTES = "mm:cache:bytes"
# Hash of counters: hits, misses, stores, evictions, and hits:<model> and misses:<model>.
CACHE_STATS = "mm:cache:stats"


def cache_entry(digest: str) -> str:
    """A cached result, by the sha256 of its request (model digest included): a string with a TTL."""
    return f"mm:cache:e:{digest}"
