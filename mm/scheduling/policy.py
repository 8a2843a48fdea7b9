"""The scheduling policy: a pure function from a :class:`Snapshot` to the actions that serve demand.

The live leader calls :func:`plan` every tick and the discrete-event simulator calls the same
function, so it reads nothing but its argument (time is ``snapshot.now``), iterates in sorted
order, and re-planning an unchanged snapshot yields the same actions.

Design, in one place:

- **Score.** Each priority class has a level (low 0, normal 1, high 2) and a weight of
  ``10 ** level`` (1 / 10 / 100). Aging: every ``aging_s`` that a class's oldest job has waited
  raises that class one level, past ``high`` too (a low job that waited ``3 * aging_s`` weighs
  1000, more than a fresh high one), so nothing starves. A model's score is the sum over its
  classes of ``queued * weight``.
- **Placement.** Models with queued jobs and no copy resident or being loaded anywhere are
  placed best score first, one copy per model, at most one Load per node per tick, and never on
  a node with an operation under way (``node.pending``) or without workers. A node where the
  model fits in free memory (``size + safety_margin <= free``) wins, the one with the most free
  memory first; else the node where eviction is cheapest: least backlog evicted, then fewest
  drains, fewest victims, most memory left after.
- **Eviction.** Never a pinned model or one loaded less than ``min_residency_s`` ago. Victims
  are taken in the order: no queued jobs before queued ones (lowest score first), idle before
  in flight, least recently used first; then those the others make unnecessary are dropped.
  If a victim has jobs in flight, its workers are unbound (drain) and nothing is unloaded; the
  Unloads and the challenger's Load go out together on a later tick when nothing runs on them.
- **Hysteresis.** A resident model's backlog is served before switching: a model with queued
  jobs is evicted only when the challenger's score exceeds ``SWITCH_FACTOR`` (4) times the summed
  scores of the victims. One fresh high job (100) thus displaces a fresh backlog worth less than
  25 (24 low jobs, or 2 normal ones), not a bigger one, until it ages: each ``aging_s`` of waiting
  multiplies the challenger's weight by 10, while a backlog being served stays young.
- **Workers** (:mod:`mm.scheduling.bindings`): a resident model with queued jobs gets bound workers
  on its node until their slots cover ``min(queued + in_flight, max_parallel)``; workers bound to
  a model no longer resident on their node, or being evicted, are unbound.
- **Strategy.** Where a model fits in free memory, ``spread`` picks the node with the most free
  memory and ``binpack`` the one with the least that fits (``snapshot.placement``).
- **Replicas.** A resident model whose backlog exceeds ``replica_backlog`` jobs per parallel slot
  of every copy gets one more copy per tick, on a node where it fits in free memory (no eviction,
  so nothing in use is moved), chosen by the same strategy.
- **Reject** the queued jobs of a model missing from the registry, or whose ``size +
  safety_margin`` exceeds every node's total memory (never while no node is known).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass, field

from mm.scheduling.bindings import assign_workers
from mm.scheduling.snapshot import (
    PRIORITY_CLASSES,
    Action,
    Demand,
    Load,
    Node,
    Reject,
    Resident,
    Snapshot,
    Unbind,
    Unload,
)

__all__ = ["CLASS_LEVEL", "SWITCH_FACTOR", "class_weight", "demand_score", "plan"]

CLASS_LEVEL = {"high": 2, "normal": 1, "low": 0}
LEVEL_RATIO = 10.0  # weight ratio between adjacent levels: high / normal / low = 100 / 10 / 1
MAX_LEVEL = 30  # aging stops here; keeps weights finite and comparable
SWITCH_FACTOR = 4.0  # a backlogged resident is evicted only for a challenger scoring this many times more


def class_weight(priority: str, oldest_wait_s: float, aging_s: float) -> float:
    """Weight of one job of class ``priority`` whose class's oldest job waited ``oldest_wait_s``.

    Args:
        priority: ``high``, ``normal`` or ``low`` (an unknown class counts as ``normal``).
        oldest_wait_s: age of the class's oldest queued job.
        aging_s: waiting time that raises the class by one level; ``<= 0`` disables aging.

    Returns:
        ``10 ** level``, where level is the class's (low 0 .. high 2) plus one per ``aging_s``.
    """
    level = CLASS_LEVEL.get(priority, CLASS_LEVEL["normal"])
    if aging_s > 0 and oldest_wait_s > 0:
        level += int(oldest_wait_s // aging_s)
    return LEVEL_RATIO ** min(level, MAX_LEVEL)


def demand_score(demand: Demand, aging_s: float) -> float:
    """Aged, priority-weighted demand of one model: sum of ``queued * class_weight`` over classes."""
    # Classes are summed in one fixed order (unknown ones, counted as normal, after the known ones),
    # so the same demand always gives the same float. This runs for every demanded model on every
    # tick (1,000 at scale): the common case builds nothing.
    queued, waits = demand.queued, demand.oldest_wait_s
    classes = PRIORITY_CLASSES if queued.keys() <= CLASS_LEVEL.keys() else (
        *PRIORITY_CLASSES, *sorted(queued.keys() - CLASS_LEVEL.keys()))
    score = 0.0
    for cls in classes:
        count = queued.get(cls, 0)
        if count > 0:
            score += count * class_weight(cls, waits.get(cls, 0.0), aging_s)
    return score


_Cost = tuple[float, int, int, int, str]  # backlog evicted, drains, victims, -free after, node name


@dataclass
class _NodeRoom:
    """One node's free memory and its evictable residents, in eviction preference order."""

    name: str
    node: Node
    free: int
    victims: list[Resident]
    scores: list[float]  # each victim's demand score: non-decreasing, as victims are sorted by it first
    cum_size: list[int]  # cum_size[k]: bytes freed by evicting victims[0..k]
    costs: list[_Cost]  # costs[k]: the cost of evicting victims[0..k]
    freeable: int  # free memory with every victim evicted


@dataclass
class _Plan:
    unbinds: list[Unbind] = field(default_factory=list)
    unloads: list[Unload] = field(default_factory=list)
    loads: list[Load] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    doomed: set[tuple[str, str]] = field(default_factory=set)  # (node, model) being evicted


def plan(snapshot: Snapshot) -> list[Action]:
    """Decide what to load, unload, bind and unbind (and which jobs to reject) now.

    Args:
        snapshot: the cluster's state: demand per model, nodes, residents, workers.

    Returns:
        Actions in execution order: unbinds, unloads, loads, binds, then rejects. Re-planning a
        snapshot in which earlier actions are still under way (``node.pending``) repeats none.
    """
    scores = {m: demand_score(d, snapshot.aging_s) for m, d in snapshot.demand.items() if d.total > 0}
    out = _Plan()
    challengers = _challengers(snapshot, scores, out)
    rooms = _place(snapshot, scores, challengers, out)
    _replicate(snapshot, rooms, out)
    binds = assign_workers(snapshot, scores, out.doomed, out.unbinds)
    return [*out.unbinds, *out.unloads, *out.loads, *binds, *out.rejects]


def _challengers(snapshot: Snapshot, scores: dict[str, float], out: _Plan) -> list[tuple[str, int, float]]:
    """Demanded models with no copy resident or pending, as (model, bytes needed, score), best first.

    Models that can never run are rejected here instead.
    """
    present: set[str] = set()
    for node in snapshot.nodes.values():
        present.update(node.resident)
        present.update(node.pending)
    largest = max((n.total for n in snapshot.nodes.values()), default=None)
    result = []
    for model in sorted(scores, key=lambda m: (-scores[m], m)):
        if model in present:
            continue
        info = snapshot.models.get(model)
        if info is None:
            out.rejects.append(Reject(model, f"unknown model {model!r}: not in the registry"))
            continue
        need = info.size + snapshot.safety_margin
        if largest is not None and need > largest:
            out.rejects.append(Reject(
                model,
                f"model {model!r} needs {need} bytes ({info.size} + safety margin {snapshot.safety_margin}), "
                f"more than the largest node's {largest} bytes",
            ))
            continue
        result.append((model, need, scores[model]))
    return result


def _rooms(snapshot: Snapshot, scores: dict[str, float]) -> dict[str, _NodeRoom]:
    """Nodes that may take a Load this tick (no operation pending, at least one worker), by name."""
    rooms = {}
    for name in sorted(snapshot.nodes):
        node = snapshot.nodes[name]
        if node.pending or not node.workers:
            continue
        victims = [r for r in node.resident.values() if _evictable(snapshot, r)]
        victims.sort(key=lambda r: (scores.get(r.model, 0.0) > 0, scores.get(r.model, 0.0),
                                    r.in_flight > 0, r.last_used, r.model))
        cum, costs, total, backlog, drains = [], [], 0, 0.0, 0
        for i, r in enumerate(victims):
            total += r.size
            backlog += scores.get(r.model, 0.0)
            drains += r.in_flight > 0
            cum.append(total)
            costs.append((backlog, drains, i + 1, -(node.free + total), name))
        rooms[name] = _NodeRoom(name, node, node.free, victims, [scores.get(r.model, 0.0) for r in victims],
                                cum, costs, node.free + total)
    return rooms


def _evictable(snapshot: Snapshot, resident: Resident) -> bool:
    info = snapshot.models.get(resident.model)
    if info is not None and info.pinned:
        return False
    return snapshot.now - resident.loaded_at >= snapshot.min_residency_s


def _eviction(room: _NodeRoom, need: int, score: float) -> tuple[_Cost | None, bool]:
    """What making ``need`` bytes of room on ``room`` costs, for a challenger scoring ``score``.

    The cost is that of the shortest prefix of ``room.victims`` that frees enough (of its trimmed
    set when only that passes the hysteresis); rooms are compared by it, and the chosen room's
    prefix is then trimmed by :func:`_trim`.

    Returns:
        (cost, False), or (None, hopeless) where there is no room to make; ``hopeless`` means that
        every challenger needing at least as much and scoring at most as much finds none here either.
    """
    k = bisect_left(room.cum_size, need - room.free)
    if k == len(room.cum_size):
        return None, True
    cost = room.costs[k]
    if cost[0] > 0 and not score > SWITCH_FACTOR * cost[0]:
        # The prefix's backlog is too much for this challenger; the trimmed set's may not be, but it
        # keeps victims[k], and so at least its score.
        if not score > SWITCH_FACTOR * room.scores[k]:
            return None, True
        kept = _trim(room, k, need)
        backlog = sum(room.scores[i] for i in kept)
        if not score > SWITCH_FACTOR * backlog:
            return None, False
        cost = (backlog, sum(room.victims[i].in_flight > 0 for i in kept), len(kept),
                -(room.free + sum(room.victims[i].size for i in kept)), room.name)
    return cost, False


def _trim(room: _NodeRoom, k: int, need: int) -> list[int]:
    """Indices of victims[0..k] less those the others can do without.

    Greedy order can over-evict (a small LRU model and then a big one): the least preferred victims
    are tried first. The last one, which scores highest, always stays.
    """
    kept, freed, deficit = list(range(k + 1)), room.cum_size[k], need - room.free
    for i in range(k - 1, -1, -1):
        if freed - room.victims[i].size >= deficit:
            freed -= room.victims[i].size
            kept.remove(i)
    return kept


def _fitting(snapshot: Snapshot, rooms: dict[str, _NodeRoom], need: int) -> _NodeRoom | None:
    """The room where ``need`` bytes fit in free memory, by the placement strategy; None if none."""
    fits = [room for room in rooms.values() if room.free >= need]
    if not fits:
        return None
    if snapshot.placement == "binpack":
        return min(fits, key=lambda room: (room.free, room.name))
    return min(fits, key=lambda room: (-room.free, room.name))


def _idle_room(rooms: dict[str, _NodeRoom], need: int) -> tuple[_NodeRoom, list[Resident]] | None:
    """The room that makes ``need`` bytes by evicting the fewest idle models (none queued, none
    running, past their minimum residency), and those models; None if no room can."""
    best = None
    for room in rooms.values():
        freed, victims = room.free, []
        # Victims are ordered idle first (no backlog, nothing in flight), least recently used first.
        for victim, score in zip(room.victims, room.scores, strict=True):
            if freed >= need or score > 0 or victim.in_flight > 0:
                break
            freed += victim.size
            victims.append(victim)
        if freed >= need and (best is None or (len(victims), -freed, room.name) < best[0]):
            best = ((len(victims), -freed, room.name), room, victims)
    return None if best is None else (best[1], best[2])


def _replicate(snapshot: Snapshot, rooms: dict[str, _NodeRoom], out: _Plan) -> None:
    """One more copy of each model whose backlog outgrows its copies: in free memory, else in
    place of idle models. A model with jobs queued or running is never evicted for a replica."""
    if snapshot.replica_backlog <= 0 or not rooms:
        return
    copies: dict[str, set[str]] = {}
    for name, node in snapshot.nodes.items():
        for model in (*node.resident, *node.pending):
            copies.setdefault(model, set()).add(name)
    for load in out.loads:
        copies.setdefault(load.model, set()).add(load.node)
    hot = []
    for model, demand in snapshot.demand.items():
        info = snapshot.models.get(model)
        have = copies.get(model)
        if info is None or not have or not any(model in snapshot.nodes[n].resident for n in have):
            continue
        if demand.total > snapshot.replica_backlog * max(1, info.max_parallel) * len(have):
            hot.append((-demand.total, model))
    for _, model in sorted(hot):
        candidates = {name: room for name, room in rooms.items() if name not in copies[model]}
        need = snapshot.models[model].size + snapshot.safety_margin
        room = _fitting(snapshot, candidates, need)
        if room is not None:
            out.loads.append(Load(room.name, model))
        else:
            idle = _idle_room(candidates, need)
            if idle is None:
                continue
            room, victims = idle
            _commit(room, model, victims, out)
        del rooms[room.name]


def _place(snapshot: Snapshot, scores: dict[str, float], challengers: list[tuple[str, int, float]],
           out: _Plan) -> dict[str, _NodeRoom]:
    """Give each challenger, best first, a node: free memory first, else the cheapest eviction.

    Returns the rooms (nodes) that took no Load this tick.
    """
    rooms = _rooms(snapshot, scores)
    by_free = [(-room.free, name) for name, room in rooms.items()]
    by_freeable = [(-room.freeable, name) for name, room in rooms.items()]
    heapq.heapify(by_free)
    heapq.heapify(by_freeable)
    # Challengers come in falling score order and a node that took none is left unchanged, so once a
    # model found no node anywhere for monotone reasons (see _eviction), one needing as much finds none.
    smallest_failed = None
    for model, need, score in challengers:
        if not rooms:
            break
        for heap in (by_free, by_freeable):
            while heap[0][1] not in rooms:
                heapq.heappop(heap)
        if -by_free[0][0] >= need:
            # spread: the heap's top has the most free memory; binpack looks for the tightest fit.
            fitting = rooms[by_free[0][1]] if snapshot.placement != "binpack" else _fitting(snapshot, rooms, need)
            assert fitting is not None  # the heap's top fits, so some room does
            room = fitting
            victims = []
        elif need > -by_freeable[0][0] or (smallest_failed is not None and need >= smallest_failed):
            continue
        else:
            best: _Cost | None = None
            hopeless_everywhere = True
            for candidate in rooms.values():
                cost, hopeless = _eviction(candidate, need, score)
                if cost is None:
                    hopeless_everywhere = hopeless_everywhere and hopeless
                elif best is None or cost < best:
                    best = cost
            if best is None:
                if hopeless_everywhere:
                    smallest_failed = need
                continue
            room = rooms[best[4]]
            victims = [room.victims[i] for i in _trim(room, bisect_left(room.cum_size, need - room.free), need)]
        _commit(room, model, victims, out)
        del rooms[room.name]
    return rooms


def _commit(room: _NodeRoom, model: str, victims: list[Resident], out: _Plan) -> None:
    """Evict ``victims`` from ``room`` and load ``model`` there, or start draining if jobs still run."""
    for victim in victims:
        out.doomed.add((room.name, victim.model))
        for worker in sorted(room.node.workers, key=lambda w: w.hostname):
            if worker.bound == victim.model:
                out.unbinds.append(Unbind(room.name, worker.hostname, victim.model))
    if any(v.in_flight > 0 for v in victims):
        return  # drain: the Unload and the Load go out on a later tick, once nothing runs on the victims
    for victim in victims:
        out.unloads.append(Unload(room.name, victim.model, f"evicted to make room for {model}"))
    out.loads.append(Load(room.name, model))
