"""How a Celery process must be started to take an mm role, and what is wrong with one that is not.

A gpu-broker (consuming ``mm.node.<MM_NODE>``) runs the node agent and a leader candidate in its
own process: it needs Celery's threads pool and one slot (``-P threads -c 1``); on the default
prefork pool its load commands would run in a forked child with no node agent, and jobs would wait
forever behind it. A model-worker needs the threads pool too, as many threads as ``MM_WORKER_SLOTS``
(the leader binds it by that count), and no model queue of its own: the leader binds model queues.
Each problem names the setting or flag at fault and the fix; the process stops with it at start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from mm import keys, replies
from mm.settings import Settings

PROBLEM_TTL_S = 86_400  # how long `mm check` reports a process that refused to start


@dataclass(frozen=True)
class Started:
    """How a Celery worker process was started: its pool, its concurrency and the queues it consumes."""

    pool: str  # the pool's module name: "thread", "prefork", "solo", "gevent", "eventlet"
    concurrency: int
    queues: frozenset[str]

    @property
    def broker_queues(self) -> list[str]:
        return sorted(q for q in self.queues if q.startswith(keys.node_queue("")))

    @property
    def is_broker(self) -> bool:
        return bool(self.broker_queues)


def broker_command(node: str) -> str:
    return f"celery -A mm.app worker -Q {keys.node_queue(node)},{keys.BEAT_QUEUE} -c 1 -P threads -n gpu-broker@{node}"


def worker_command(node: str, slots: int) -> str:
    return f"celery -A mm.app worker -P threads -c {slots} -n model-1@{node}"


def _broker_problems(started: Started, settings: Settings) -> list[str]:
    found = []
    fix = f"start it as: {broker_command(settings.node)}"
    if started.pool != "thread":
        found.append(f"a gpu-broker must run on Celery's threads pool (-P threads), not {started.pool}: on another "
                     f"pool its load and unload commands run where no node agent is, and jobs wait forever; {fix}")
    if started.concurrency != 1:
        found.append(f"a gpu-broker runs one command at a time (-c 1), not -c {started.concurrency}; {fix}")
    if started.broker_queues != [keys.node_queue(settings.node)]:
        found.append(f"this gpu-broker consumes {', '.join(started.broker_queues)} but MM_NODE is "
                     f"{settings.node!r}: it must consume exactly {keys.node_queue(settings.node)}; {fix}")
    return found


def _worker_problems(started: Started, settings: Settings) -> list[str]:
    found = []
    fix = f"start it as: {worker_command(settings.node, settings.worker_slots)}"
    if started.pool != "thread":
        found.append(f"a model-worker must run on Celery's threads pool (-P threads), not {started.pool}; {fix}")
    if started.concurrency != settings.worker_slots:
        found.append(f"this model-worker has -c {started.concurrency} but MM_WORKER_SLOTS is "
                     f"{settings.worker_slots}: the leader binds it by MM_WORKER_SLOTS, so set both the same; {fix}")
    by_hand = sorted(q for q in started.queues if keys.model_from_queue(q))
    if by_hand:
        found.append(f"a model-worker must not consume model queues by hand ({', '.join(by_hand)}): the leader "
                     f"binds workers to the models it loads; drop them from -Q; {fix}")
    return found


def _publisher(raw: bytes | str | None) -> tuple[str, str, float] | None:
    """(host, runtime URL, publish time) of a node state, or None (no state, or one from before hosts were named)."""
    if raw is None:
        return None
    state = json.loads(raw)
    return (state["host"], state.get("runtime_url", ""), float(state.get("at", 0))) if "host" in state else None


def node_taken(r: redis.Redis, settings: Settings, host: str) -> list[str]:
    """A problem if another live node (another host or runtime) publishes state as ``MM_NODE``.

    A gpu-broker of the same host and runtime is the same node (a standby, or this one restarted).
    A state from elsewhere counts only if it is published again within two heartbeats: one left
    behind by a node that died expires on its own.
    """
    seen = _publisher(r.get(keys.node_state(settings.node)))
    if seen is None or seen[:2] == (host, settings.runtime_url):
        return []
    deadline = time.monotonic() + 2 * settings.heartbeat_s + 0.5
    while time.monotonic() < deadline:
        time.sleep(min(0.1, settings.heartbeat_s / 4))
        now = _publisher(r.get(keys.node_state(settings.node)))
        if now is not None and now[:2] == seen[:2] and now[2] > seen[2]:
            return [f"another node already runs as MM_NODE={settings.node!r} (host {seen[0]}, runtime {seen[1]}; "
                    f"this one is host {host}, runtime {settings.runtime_url}): two nodes under one name would "
                    f"overwrite each other's state and take each other's commands; give each node its own MM_NODE"]
    return []


def problems(started: Started, settings: Settings) -> list[str]:
    """What is wrong with how this worker was started for its role (an empty list if nothing)."""
    return _broker_problems(started, settings) if started.is_broker else _worker_problems(started, settings)


def record(r: redis.Redis, hostname: str, found: list[str]) -> None:
    """Keep why ``hostname`` refused to start, for ``mm check``; nothing found clears it."""
    if found:
        r.set(keys.setup_problem(hostname), json.dumps({"problems": found, "at": time.time()}), ex=PROBLEM_TTL_S)
    else:
        r.delete(keys.setup_problem(hostname))


def recorded(r: redis.Redis) -> dict[str, list[str]]:
    """hostname -> why it refused to start, for every process that did within PROBLEM_TTL_S."""
    found = {}
    for key in r.scan_iter(match=keys.SETUP_PROBLEMS):
        raw = r.get(key)
        if raw:
            found[replies.text(key).rpartition(":")[2]] = json.loads(raw)["problems"]
    return found
