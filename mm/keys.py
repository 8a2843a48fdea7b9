"""Every Redis key and queue name mm uses; nothing else spells one out."""

from __future__ import annotations

PREFIX = "mm"

# Celery priority on Redis: 0 is served first. Each step is its own Redis list.
PRIORITIES: dict[str, int] = {"high": 0, "normal": 5, "low": 9}
PRIORITY_STEPS: list[int] = sorted(PRIORITIES.values())
PRIORITY_NAMES: dict[int, str] = {v: k for k, v in PRIORITIES.items()}
# Model names may contain ':' (gemma3:270m), so the priority separator must not.
PRIORITY_SEP = "|"

BROKER_LEASE = "mm:lock:broker"
FENCE = "mm:fence"
WAKE = "mm:wake"
MODELS = "mm:models"
NODES = "mm:nodes"
WORKERS = "mm:workers"
ACTIVITY = "mm:activity"
EVENTS = "mm:events"
DEAD_LETTERS = "mm:deadletters"


def model_queue(model: str) -> str:
    """The Celery queue holding jobs for ``model``."""
    return f"mm.model.{model}"


def model_from_queue(queue: str) -> str | None:
    return queue[len("mm.model."):] if queue.startswith("mm.model.") else None


def priority_list(model: str, priority: int) -> str:
    """The Redis list kombu uses for ``model``'s queue at one priority step."""
    queue = model_queue(model)
    return f"{queue}{PRIORITY_SEP}{priority}" if priority else queue


def node_queue(node: str) -> str:
    """The queue of one GPU host's broker (node agent)."""
    return f"mm.node.{node}"


def idle_queue(hostname: str) -> str:
    """A model-worker's own queue while it is bound to no model."""
    return f"mm.idle.{hostname}"


def node_state(node: str) -> str:
    return f"mm:node:{node}"


def node_fence_seen(node: str) -> str:
    return f"mm:fence:seen:{node}"


def worker_state(hostname: str) -> str:
    return f"mm:worker:{hostname}"


def job(job_id: str) -> str:
    return f"mm:job:{job_id}"


def deliveries(job_id: str) -> str:
    return f"mm:deliveries:{job_id}"
