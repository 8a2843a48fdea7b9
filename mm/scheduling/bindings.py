"""Worker bindings, the second half of the policy (see :mod:`mm.scheduling.policy`).

A resident model with queued jobs gets bound workers on its node until the sum of their slots
covers ``min(queued + in_flight, max_parallel)`` (at least one worker). Workers come, in this
order, from: unbound workers (and those unbound this tick); workers bound to a resident model
with no queued jobs; and, only for a model that has no worker at all, a worker of a backlogged
model that keeps its own full need without it. Bindings of a model with queued jobs are
otherwise left alone, and a model with more workers than it needs keeps them.
"""

from __future__ import annotations

from mm.scheduling.snapshot import Bind, ModelInfo, Node, Resident, Snapshot, Unbind, Worker

_DEFAULT_MAX_PARALLEL = ModelInfo(name="", size=0).max_parallel


def need_slots(snapshot: Snapshot, resident: Resident) -> int:
    """Slots a resident model's workers should cover: ``min(queued + in_flight, max_parallel)``, >= 1."""
    info = snapshot.models.get(resident.model)
    max_parallel = info.max_parallel if info is not None else _DEFAULT_MAX_PARALLEL
    demand = snapshot.demand.get(resident.model)
    queued = demand.total if demand is not None else 0
    return max(1, min(queued + resident.in_flight, max_parallel))


def assign_workers(snapshot: Snapshot, scores: dict[str, float], doomed: set[tuple[str, str]],
                   unbinds: list[Unbind]) -> list[Bind]:
    """Bind workers to resident models with queued jobs; unbind workers of non-resident models.

    Args:
        snapshot: the state being planned.
        scores: aged, weighted demand of every model with queued jobs.
        doomed: (node, model) pairs being evicted this tick; they get no workers.
        unbinds: unbinds decided so far; appended to in place.

    Returns:
        The binds, node by node in name order.
    """
    unbound = {(u.node, u.worker) for u in unbinds}
    binds: list[Bind] = []
    for name in sorted(snapshot.nodes):
        binds.extend(_assign_node(snapshot, name, snapshot.nodes[name], scores, doomed, unbound, unbinds))
    return binds


def _assign_node(snapshot: Snapshot, name: str, node: Node, scores: dict[str, float],
                 doomed: set[tuple[str, str]], unbound: set[tuple[str, str]], unbinds: list[Unbind]) -> list[Bind]:
    free: list[Worker] = []
    by_model: dict[str, list[Worker]] = {}
    worker: Worker | None  # None when no worker can be taken
    for worker in sorted(node.workers, key=lambda w: w.hostname):
        if worker.bound is None or (name, worker.hostname) in unbound:
            free.append(worker)
        elif worker.bound not in node.resident:
            unbinds.append(Unbind(name, worker.hostname, worker.bound))
            unbound.add((name, worker.hostname))
            free.append(worker)
        else:
            by_model.setdefault(worker.bound, []).append(worker)

    needy = [m for m in node.resident
             if scores.get(m, 0.0) > 0 and m not in node.pending and (name, m) not in doomed]
    needy.sort(key=lambda m: (-scores[m], m))
    binds: list[Bind] = []
    fresh: set[str] = set()  # bound this tick: never taken away again in the same tick
    for model in needy:
        need = need_slots(snapshot, node.resident[model])
        have = sum(w.slots for w in by_model.get(model, ()))
        from_free: list[Worker] = []
        while have < need:
            worker = _take(free, need - have)
            if worker is not None:
                free.remove(worker)
                from_free.append(worker)
            else:
                idle = [w for m, ws in sorted(by_model.items()) if m != model and scores.get(m, 0.0) == 0 for w in ws]
                worker = _take(idle, need - have)
                if worker is None and have == 0:
                    worker = _take(_surplus(snapshot, node, model, by_model, fresh), need)
                if worker is None:
                    break
                assert worker.bound is not None
                by_model[worker.bound].remove(worker)
                unbinds.append(Unbind(name, worker.hostname, worker.bound))
                unbound.add((name, worker.hostname))
            binds.append(Bind(name, worker.hostname, model))
            by_model.setdefault(model, []).append(worker)
            fresh.add(worker.hostname)
            have += worker.slots
        # A free worker taken before a bigger stolen one may have become redundant: give it back.
        for worker in from_free:
            if have - worker.slots >= need:
                binds.remove(Bind(name, worker.hostname, model))
                by_model[model].remove(worker)
                fresh.discard(worker.hostname)
                free.append(worker)
                have -= worker.slots
    return binds


def _surplus(snapshot: Snapshot, node: Node, model: str, by_model: dict[str, list[Worker]],
             fresh: set[str]) -> list[Worker]:
    """Workers of other backlogged models that keep their own need without them (none bound this tick)."""
    spare: list[Worker] = []
    for other, workers in sorted(by_model.items()):
        if other == model:
            continue
        have = sum(w.slots for w in workers)
        need = need_slots(snapshot, node.resident[other])
        spare.extend(w for w in workers if w.hostname not in fresh and have - w.slots >= need)
    return spare


def _take(pool: list[Worker], wanted: int) -> Worker | None:
    """Best fit: the smallest worker covering ``wanted`` slots, else the largest; idle workers first."""
    usable = [w for w in pool if w.slots > 0]
    if not usable:
        return None
    covering = [w for w in usable if w.slots >= wanted]
    if covering:
        return min(covering, key=lambda w: (w.in_flight > 0, w.slots, w.hostname))
    return min(usable, key=lambda w: (w.in_flight > 0, -w.slots, w.hostname))
