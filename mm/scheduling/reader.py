"""Reads one consistent-enough snapshot of the cluster from Redis for the policy.

Demand is aggregated per model and priority (``LLEN`` per priority list, the oldest message's
submit time from ``LINDEX -1``), never per job, so it costs the same with a million jobs queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from mm import keys, registry
from mm.replies import members, text
from mm.scheduling.snapshot import Demand, ModelInfo, Node, Resident, Snapshot, Worker
from mm.settings import Settings


@dataclass
class ClusterRecords:
    """The node and worker records behind a snapshot, kept for status views and the leader's bookkeeping."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    gone_workers: list[str] = field(default_factory=list)  # registered, but their heartbeat expired
    registered_nodes: list[str] = field(default_factory=list)  # every node that ever published, live or not


def _submitted_at(message: bytes | None) -> float | None:
    if not message:
        return None
    try:
        return float(json.loads(message)["headers"]["mm_submitted"])
    except (ValueError, KeyError, TypeError):
        return None


def read_demand(r: redis.Redis, models: list[str], now: float) -> dict[str, Demand]:
    """Queued jobs and the oldest wait per model and priority class.

    Two pipelined passes: every list's length, then the oldest message of the lists that hold any
    (most are empty most of the time: workers take jobs as they come)."""
    names = [(model, step, keys.priority_list(model, step)) for model in models for step in keys.PRIORITY_STEPS]
    pipe = r.pipeline(transaction=False)
    for _model, _step, name in names:
        pipe.llen(name)
    held = [(entry, int(count)) for entry, count in zip(names, pipe.execute(), strict=True) if int(count)]
    for (_model, _step, name), _count in held:
        pipe.lindex(name, -1)
    oldest_messages = pipe.execute() if held else []
    queued: dict[str, dict[str, int]] = {}
    oldest: dict[str, dict[str, float]] = {}
    for ((model, step, _name), count), message in zip(held, oldest_messages, strict=True):
        cls = keys.PRIORITY_NAMES[step]  # two steps (6 and 9) share the low class
        counts = queued.setdefault(model, {})
        counts[cls] = counts.get(cls, 0) + count
        submitted = _submitted_at(message)
        waits = oldest.setdefault(model, {})
        waits[cls] = max(waits.get(cls, 0.0), now - submitted if submitted else 0.0)
    return {model: Demand(model, queued[model], oldest[model]) for model in queued}


def _load_json_records(r: redis.Redis, index_keys: list[str],
                       key_of: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    if not index_keys:
        return {}
    values = r.mget([key_of(k) for k in index_keys])
    return {k: json.loads(v) for k, v in zip(index_keys, values, strict=True) if v}


def read_records(r: redis.Redis) -> ClusterRecords:
    """Live node and worker records (expired ones are absent)."""
    node_names = [n.decode() for n in members(r.zrange(keys.NODES, 0, -1))]
    worker_names = sorted(text(w) for w in r.smembers(keys.WORKERS))
    records = ClusterRecords(_load_json_records(r, node_names, keys.node_state),
                             _load_json_records(r, worker_names, keys.worker_state))
    records.gone_workers = [w for w in worker_names if w not in records.workers]
    records.registered_nodes = node_names
    return records


def planning_size(entry: registry.ModelEntry, largest_node: int, margin: int) -> int:
    """The size to plan with: the learned one, else the estimate capped so it can still be tried.

    The estimate (tag size x multiplier) may exceed the largest node although the model fits; it is
    then capped at that node less the margin (never below the tag size), and an out-of-memory load
    teaches the real size.
    """
    if entry.learned_size or not largest_node:
        return entry.size
    return min(entry.size_estimate, max(entry.tag_size, largest_node - margin))


def build_snapshot(r: redis.Redis, settings: Settings, pending: dict[tuple[str, str], Any] | None = None,
                   bind_overrides: dict[str, str | None] | None = None, now: float | None = None,
                   records: ClusterRecords | None = None) -> tuple[Snapshot, ClusterRecords]:
    """The policy's view of the cluster now, plus the raw records it came from.

    ``pending`` holds (node, model) pairs with a command under way; ``bind_overrides`` maps a worker
    to the model the leader just (un)bound it to, until its own record catches up.
    """
    now = time.time() if now is None else now
    pending = pending or {}
    bind_overrides = bind_overrides or {}
    entries = registry.all_models(r)
    records = read_records(r) if records is None else records
    largest = max((int(n["memory"]["total"]) for n in records.nodes.values()), default=0)
    models = {
        name: ModelInfo(name, planning_size(e, largest, settings.safety_margin), e.max_parallel,
                        e.pinned or name in settings.pinned)
        for name, e in entries.items()
    }
    demand = read_demand(r, sorted(models), now)
    activity = {text(k): float(v) for k, v in r.hgetall(keys.ACTIVITY).items()}


    workers_by_node: dict[str, list[Worker]] = {}
    running_by_node: dict[str, dict[str, int]] = {}
    for hostname, w in records.workers.items():
        bound = bind_overrides.get(hostname, w.get("bound"))
        if not w.get("draining"):  # a worker shutting down takes no binding; its running jobs still count
            workers_by_node.setdefault(w["node"], []).append(
                Worker(hostname, int(w["slots"]), bound, sum(w.get("running", {}).values()))
            )
        running = running_by_node.setdefault(w["node"], {})
        for model, n in w.get("running", {}).items():
            running[model] = running.get(model, 0) + n

    nodes = {}
    for name, state in records.nodes.items():
        if not state.get("runtime_up", True):
            continue
        running = running_by_node.get(name, {})
        resident = {}
        for m in state["resident"]:
            loaded_at = m.get("loaded_at") or 0.0
            resident[m["model"]] = Resident(
                m["model"], int(m["size"]), loaded_at, max(activity.get(m["model"], 0.0), loaded_at),
                running.get(m["model"], 0),
            )
        busy = {model for (node, model) in pending if node == name}
        busy |= {model for model, op in state.get("ops", {}).items() if op.get("state") == "running"}
        memory = state["memory"]
        nodes[name] = Node(
            name, int(memory["total"]), int(memory["free"]), resident,
            tuple(sorted(workers_by_node.get(name, []), key=lambda w: w.hostname)), frozenset(busy),
        )
    snapshot = Snapshot(
        now=now, models=models, demand=demand, nodes=nodes, safety_margin=settings.safety_margin,
        min_residency_s=settings.min_residency_s, aging_s=settings.aging_s,
        placement=settings.placement, replica_backlog=settings.replica_backlog,
    )
    return snapshot, records
