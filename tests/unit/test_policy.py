"""The scheduling policy, tested as the pure function it is: snapshot in, actions out."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm.scheduling.policy import SWITCH_FACTOR, class_weight, demand_score, plan
from mm.scheduling.snapshot import (
    Bind,
    Demand,
    Load,
    ModelInfo,
    Node,
    Reject,
    Resident,
    Snapshot,
    Unbind,
    Unload,
    Worker,
)
from tests.support import GIB

NOW = 1_000.0


# -- builders ------------------------------------------------------------------------------------


def model(name: str, size_gib: float = 4, max_parallel: int = 4, pinned: bool = False) -> ModelInfo:
    return ModelInfo(name=name, size=int(size_gib * GIB), max_parallel=max_parallel, pinned=pinned)


def demand(name: str, high: int = 0, normal: int = 0, low: int = 0, wait: float = 0.0, **waits: float) -> Demand:
    """Queued jobs per class; every class's oldest job waited ``wait`` unless ``<class>_wait`` says otherwise."""
    queued = {c: n for c, n in (("high", high), ("normal", normal), ("low", low)) if n}
    return Demand(model=name, queued=queued, oldest_wait_s={c: waits.get(f"{c}_wait", wait) for c in queued})


def res(name: str, size_gib: float = 4, loaded_at: float = 0.0, last_used: float = 0.0, in_flight: int = 0) -> Resident:
    return Resident(model=name, size=int(size_gib * GIB), loaded_at=loaded_at, last_used=last_used, in_flight=in_flight)


def worker(host: str, slots: int = 4, bound: str | None = None, in_flight: int = 0) -> Worker:
    return Worker(hostname=host, slots=slots, bound=bound, in_flight=in_flight)


def node(name: str, total_gib: float = 16, resident=(), workers=None, pending=()) -> Node:
    """A node whose free memory is its total minus its residents; one unbound worker unless told."""
    total = int(total_gib * GIB)
    if workers is None:
        workers = (worker(f"{name}-w0"),)
    return Node(
        name=name,
        total=total,
        free=total - sum(r.size for r in resident),
        resident={r.model: r for r in resident},
        workers=tuple(workers),
        pending=frozenset(pending),
    )


def snap(models=(), demands=(), nodes=(), now: float = NOW, **kw) -> Snapshot:
    return Snapshot(
        now=now,
        models={m.name: m for m in models},
        demand={d.model: d for d in demands},
        nodes={n.name: n for n in nodes},
        **kw,
    )


def of(kind, actions):
    return [a for a in actions if isinstance(a, kind)]


# -- score ---------------------------------------------------------------------------------------


def test_priority_classes_weigh_100_10_and_1():
    # given fresh jobs, when weighed, expect the documented weights
    assert [class_weight(c, 0.0, 60.0) for c in ("high", "normal", "low")] == [100.0, 10.0, 1.0]


def test_every_aging_period_raises_a_class_by_one_level():
    # given a low job that waited just under, at, and past two aging periods
    weights = [class_weight("low", w, 60.0) for w in (59.9, 60.0, 120.0, 180.0)]
    # expect normal's weight after one period, high's after two, beyond high after three
    assert weights == [1.0, 10.0, 100.0, 1000.0]


def test_aging_is_off_when_aging_s_is_zero():
    assert class_weight("low", 10_000.0, 0.0) == 1.0


def test_demand_score_sums_count_times_weight_over_classes():
    d = demand("m", high=2, normal=3, low=4, low_wait=61.0)
    assert demand_score(d, 60.0) == 2 * 100 + 3 * 10 + 4 * 10


# -- loading and placement -----------------------------------------------------------------------


def test_loads_the_demanded_model_when_memory_is_free():
    # given one idle node with room and queued jobs for a model that is not resident
    s = snap([model("a", 4)], [demand("a", normal=3)], [node("n1", 16)])
    # when planned, expect exactly one Load of it there
    assert plan(s) == [Load("n1", "a")]


def test_does_not_load_a_model_with_nothing_queued():
    s = snap([model("a", 4)], [Demand("a", queued={"normal": 0})], [node("n1", 16)])
    assert plan(s) == []


def test_places_a_model_on_the_node_with_the_most_free_memory():
    # given three nodes with 8, 12 and 10 GiB free
    s = snap([model("a", 4)], [demand("a", normal=1)],
             [node("n1", 8), node("n2", 12), node("n3", 10)])
    # expect the 12 GiB node
    assert of(Load, plan(s)) == [Load("n2", "a")]


def test_spreads_models_over_nodes_with_one_load_per_node_per_tick():
    # given four demanded models and three empty nodes
    models = [model(m, 4) for m in "abcd"]
    s = snap(models, [demand(m, normal=i + 1) for i, m in enumerate("abcd")],
             [node("n1"), node("n2"), node("n3")])
    loads = of(Load, plan(s))
    # expect the three best-scored models loaded, each on its own node
    assert sorted(ld.model for ld in loads) == ["b", "c", "d"]
    assert len({ld.node for ld in loads}) == 3


def test_respects_the_safety_margin():
    # given a node with exactly 5 GiB free and a 4 GiB model
    models, demands, nodes = [model("a", 4)], [demand("a", normal=1)], [node("n1", 5)]
    # expect a load with a 1 GiB margin, none with a margin one byte larger
    assert plan(snap(models, demands, nodes, safety_margin=GIB)) == [Load("n1", "a")]
    assert of(Load, plan(snap(models, demands, nodes, safety_margin=GIB + 1))) == []


def test_does_not_load_a_model_already_resident_on_another_node():
    s = snap([model("a", 4)], [demand("a", normal=50)],
             [node("n1", 16, [res("a", 4)], [worker("w1", bound="a")]), node("n2", 16)])
    assert of(Load, plan(s)) == []


def test_does_not_load_onto_a_node_without_workers():
    # given a large node with no workers and a small node with one
    s = snap([model("a", 4)], [demand("a", normal=1)], [node("big", 64, workers=()), node("small", 8)])
    # expect the model where something can serve it
    assert of(Load, plan(s)) == [Load("small", "a")]


def test_places_the_higher_scored_challenger_first_when_only_one_fits():
    s = snap([model("lo", 4), model("hi", 4)], [demand("lo", low=50), demand("hi", high=1)], [node("n1", 6)])
    assert of(Load, plan(s)) == [Load("n1", "hi")]


# -- eviction ------------------------------------------------------------------------------------


def test_evicts_the_idle_least_recently_used_model_to_make_room():
    # given a full node with two idle models, "old" used longest ago
    s = snap([model("old", 6), model("recent", 6), model("new", 6)], [demand("new", normal=1)],
             [node("n1", 12, [res("old", 6, last_used=100), res("recent", 6, last_used=900)])])
    actions = plan(s)
    # expect "old" unloaded and "new" loaded in its place, in that order
    assert of(Unload, actions) == [Unload("n1", "old", "evicted to make room for new")]
    assert of(Load, actions) == [Load("n1", "new")]
    assert actions.index(of(Unload, actions)[0]) < actions.index(Load("n1", "new"))


def test_evicts_a_model_without_queued_jobs_before_a_less_recently_used_one_with_backlog():
    s = snap([model("busy", 6), model("idle", 6), model("new", 6)],
             [demand("new", high=5), demand("busy", low=1)],
             [node("n1", 12, [res("busy", 6, last_used=1), res("idle", 6, last_used=999)])])
    assert [u.model for u in of(Unload, plan(s))] == ["idle"]


def test_evicts_only_as_many_models_as_it_needs():
    # given LRU order small (1 GiB) then big (8 GiB), and a challenger needing 6 GiB more than is free
    s = snap([model("small", 1), model("big", 8), model("new", 8)], [demand("new", normal=1)],
             [node("n1", 11, [res("small", 1, last_used=1), res("big", 8, last_used=2)])])
    # expect the big one alone evicted: the small one frees too little and is not needed with it
    assert of(Unload, plan(s)) == [Unload("n1", "big", "evicted to make room for new")]


def test_a_bigger_challenger_may_still_evict_where_a_smaller_better_one_could_not():
    # given b1, b2 (2 GiB each) then c (20 GiB) in eviction order, each with a backlog scoring 10
    models = [model("b1", 2), model("b2", 2), model("c", 20), model("x", 4), model("y", 5)]
    backlog = [demand("b1", normal=1), demand("b2", normal=1), demand("c", normal=1)]
    nodes = [node("n1", 24, [res("b1", 2, last_used=1), res("b2", 2, last_used=2), res("c", 20, last_used=3)])]
    # and challengers x (4 GiB, score 50: would evict b1 + b2, backlog 20, needs > 80)
    # and y (5 GiB, score 45: evicts c alone, backlog 10, needs > 40)
    s = snap(models, [*backlog, demand("x", normal=5), demand("y", normal=4, low=5)], nodes)
    actions = plan(s)
    # expect y placed even though x, ranked first and smaller, found no room
    assert of(Load, actions) == [Load("n1", "y")]
    assert of(Unload, actions) == [Unload("n1", "c", "evicted to make room for y")]


def test_prefers_a_node_with_free_memory_over_evicting():
    s = snap([model("old", 6), model("new", 6)], [demand("new", normal=1)],
             [node("full", 12, [res("old", 6), res("x", 6)]), node("roomy", 7)])
    assert plan(s) == [Load("roomy", "new")]


def test_prefers_the_node_where_eviction_costs_no_backlog():
    # given two full nodes: on n1 the victim still has queued jobs, on n2 it has none
    s = snap([model("b1", 6), model("b2", 6), model("new", 6)],
             [demand("new", high=10), demand("b1", low=1)],
             [node("n1", 6, [res("b1", 6)], [worker("w1", bound="b1")]),
              node("n2", 6, [res("b2", 6)], [worker("w2", bound="b2")])])
    actions = plan(s)
    assert of(Unload, actions) == [Unload("n2", "b2", "evicted to make room for new")]
    assert of(Load, actions) == [Load("n2", "new")]


def test_prefers_evicting_an_idle_model_over_draining_a_busy_one():
    # given two full nodes whose only victims have no queued jobs: on n1 jobs still run, n2 is idle
    s = snap([model("busy", 6), model("idle", 6), model("new", 6)], [demand("new", normal=1)],
             [node("n1", 6, [res("busy", 6, last_used=1, in_flight=2)], [worker("w1", bound="busy")]),
              node("n2", 6, [res("idle", 6, last_used=999)], [worker("w2")])])
    assert plan(s) == [Unload("n2", "idle", "evicted to make room for new"), Load("n2", "new")]


def test_among_equal_evictions_prefers_the_node_left_with_the_most_free_memory():
    # given one idle 6 GiB victim per node next to a pinned model: n1 ends with 6 GiB free, n2 with 10 GiB
    models = [model("p1", 6, pinned=True), model("p2", 6, pinned=True), model("v1", 6), model("v2", 6),
              model("new", 6)]
    s = snap(models, [demand("new", normal=1)],
             [node("n1", 12, [res("p1", 6), res("v1", 6)]), node("n2", 16, [res("p2", 6), res("v2", 6)])])
    assert of(Load, plan(s)) == [Load("n2", "new")]


def test_never_evicts_a_pinned_model():
    s = snap([model("pin", 12, pinned=True), model("new", 6)], [demand("new", high=100, wait=10_000)],
             [node("n1", 12, [res("pin", 12)])])
    assert plan(s) == []


def test_never_evicts_a_freshly_loaded_model():
    # given an idle model loaded 5 s ago with a 10 s minimum residency
    nodes = [node("n1", 12, [res("fresh", 12, loaded_at=NOW - 5, last_used=NOW - 5)])]
    models, demands = [model("fresh", 12), model("new", 6)], [demand("new", high=100)]
    assert plan(snap(models, demands, nodes, min_residency_s=10.0)) == []
    # expect the eviction once it has been resident long enough
    assert of(Load, plan(snap(models, demands, nodes, now=NOW + 5, min_residency_s=10.0))) == [Load("n1", "new")]


def test_never_unloads_a_model_with_jobs_in_flight_but_drains_it_first():
    # given the only evictable model is running 2 jobs on a bound worker, nothing else queued for it
    s = snap([model("busy", 12), model("new", 12)], [demand("new", high=3)],
             [node("n1", 12, [res("busy", 12, in_flight=2)], [worker("w1", bound="busy", in_flight=2)])])
    actions = plan(s)
    # expect its worker unbound (drain) and no Unload or Load yet
    assert actions == [Unbind("n1", "w1", "busy")]


def test_unloads_a_drained_model_on_a_later_tick_and_loads_the_challenger():
    # given the drain's next tick: the worker unbound and the last job finished
    s = snap([model("busy", 12), model("new", 12)], [demand("new", high=3)],
             [node("n1", 12, [res("busy", 12, in_flight=0)], [worker("w1")])])
    assert plan(s) == [Unload("n1", "busy", "evicted to make room for new"), Load("n1", "new")]


def test_does_not_rebind_a_draining_model_with_backlog_while_it_drains():
    # given a challenger that dominates a resident backlog whose jobs are still running, workers unbound
    s = snap([model("old", 12), model("new", 12)], [demand("new", high=10), demand("old", low=3)],
             [node("n1", 12, [res("old", 12, in_flight=1)], [worker("w1")])])
    # expect nothing: the drain continues, the worker stays away from "old"
    assert plan(s) == []


def test_unbinds_the_workers_of_an_evicted_model_along_with_the_unload():
    s = snap([model("old", 12), model("new", 12)], [demand("new", normal=1)],
             [node("n1", 12, [res("old", 12)], [worker("w1", bound="old"), worker("w2", bound="old")])])
    assert plan(s) == [Unbind("n1", "w1", "old"), Unbind("n1", "w2", "old"),
                       Unload("n1", "old", "evicted to make room for new"), Load("n1", "new")]


# -- hysteresis and aging ------------------------------------------------------------------------


def test_serves_the_resident_backlog_before_switching_models():
    # given a resident model with 10 normal jobs queued (score 100) and a challenger with 2 high (200)
    s = snap([model("cur", 12), model("next", 12)], [demand("cur", normal=10), demand("next", high=2)],
             [node("n1", 12, [res("cur", 12)], [worker("w1", bound="cur")])])
    # expect no switch: 200 does not clearly dominate 100
    assert plan(s) == []


def test_switches_when_the_challenger_clearly_dominates_the_resident_backlog():
    # given the resident backlog scores 100 and the challenger just over SWITCH_FACTOR times that
    s = snap([model("cur", 12), model("next", 12)],
             [demand("cur", normal=10), demand("next", high=int(SWITCH_FACTOR) + 1)],
             [node("n1", 12, [res("cur", 12)], [worker("w1", bound="cur")])])
    assert plan(s) == [Unbind("n1", "w1", "cur"), Unload("n1", "cur", "evicted to make room for next"),
                       Load("n1", "next")]


def test_aging_lets_a_long_waiting_low_priority_model_displace_a_fresh_high_priority_backlog():
    models = [model("hi", 12), model("lo", 12)]
    nodes = [node("n1", 12, [res("hi", 12)], [worker("w1", bound="hi")])]

    def switches(lo_wait: float) -> bool:
        s = snap(models, [demand("hi", high=4), demand("lo", low=1, wait=lo_wait)], nodes, aging_s=60.0)
        return Load("n1", "lo") in plan(s)

    # given a resident fresh high backlog (score 400): one low job must reach weight > 1600
    # expect: not after three aging periods (1,000), yes after four (10,000)
    assert not switches(0.0)
    assert not switches(3 * 60.0)
    assert switches(4 * 60.0)


def test_aging_lets_a_long_waiting_low_priority_model_take_a_free_slot_before_fresh_high_priority():
    models, nodes = [model("hi", 6), model("lo", 6)], [node("n1", 6)]
    fresh = snap(models, [demand("hi", high=1), demand("lo", low=1, wait=0.0)], nodes, aging_s=60.0)
    aged = snap(models, [demand("hi", high=1), demand("lo", low=1, wait=180.0)], nodes, aging_s=60.0)
    assert of(Load, plan(fresh)) == [Load("n1", "hi")]
    assert of(Load, plan(aged)) == [Load("n1", "lo")]


# -- workers -------------------------------------------------------------------------------------


def test_binds_workers_until_their_slots_cover_max_parallel():
    # given 10 queued jobs, max_parallel 6 and four unbound 2-slot workers
    s = snap([model("a", 4, max_parallel=6)], [demand("a", normal=10)],
             [node("n1", 16, [res("a", 4)], [worker(f"w{i}", slots=2) for i in range(4)])])
    binds = of(Bind, plan(s))
    # expect three of them (6 slots), no more
    assert binds == [Bind("n1", "w0", "a"), Bind("n1", "w1", "a"), Bind("n1", "w2", "a")]


def test_binds_the_smallest_worker_that_covers_the_need():
    s = snap([model("a", 4)], [demand("a", normal=2)],
             [node("n1", 16, [res("a", 4)], [worker("big", slots=8), worker("small", slots=2)])])
    assert plan(s) == [Bind("n1", "small", "a")]


def test_binds_only_enough_slots_for_queued_plus_in_flight_jobs():
    s = snap([model("a", 4, max_parallel=8)], [demand("a", normal=1)],
             [node("n1", 16, [res("a", 4, in_flight=2)],
                   [worker("w0", slots=2, bound="a", in_flight=2), worker("w1", slots=2), worker("w2", slots=2)])])
    assert of(Bind, plan(s)) == [Bind("n1", "w1", "a")]


def test_binds_at_least_one_worker_even_if_it_has_more_slots_than_needed():
    s = snap([model("a", 4)], [demand("a", low=1)], [node("n1", 16, [res("a", 4)], [worker("w0", slots=8)])])
    assert plan(s) == [Bind("n1", "w0", "a")]


def test_binds_only_workers_on_the_node_where_the_model_is_resident():
    s = snap([model("a", 4)], [demand("a", normal=4)],
             [node("n1", 16, [res("a", 4)], [worker("n1-w")]), node("n2", 16, [], [worker("n2-w")])])
    assert plan(s) == [Bind("n1", "n1-w", "a")]


def test_does_not_touch_bindings_that_already_cover_the_need():
    s = snap([model("a", 4)], [demand("a", normal=100)],
             [node("n1", 16, [res("a", 4)], [worker("w0", bound="a"), worker("w1")])])
    assert plan(s) == []


def test_steals_a_worker_bound_to_a_resident_model_with_no_queued_jobs():
    s = snap([model("a", 4), model("idle", 4)], [demand("a", normal=2)],
             [node("n1", 16, [res("a", 4), res("idle", 4)], [worker("w0", bound="idle")])])
    assert plan(s) == [Unbind("n1", "w0", "idle"), Bind("n1", "w0", "a")]


def test_takes_an_unbound_worker_before_stealing_one():
    s = snap([model("a", 4), model("idle", 4)], [demand("a", normal=2)],
             [node("n1", 16, [res("a", 4), res("idle", 4)], [worker("w0", bound="idle"), worker("w1")])])
    assert plan(s) == [Bind("n1", "w1", "a")]


def test_does_not_steal_workers_from_a_model_that_still_has_queued_jobs():
    # given "b" holds the node's only worker and still has a backlog
    s = snap([model("a", 4), model("b", 4)], [demand("a", high=50), demand("b", low=1)],
             [node("n1", 16, [res("a", 4), res("b", 4)], [worker("w0", bound="b")])])
    assert plan(s) == []


def test_lends_a_spare_worker_of_a_backlogged_model_to_one_that_has_none():
    # given "b" has two 4-slot workers but needs only 4 slots (max_parallel 4), "a" has none
    s = snap([model("a", 4), model("b", 4)], [demand("a", normal=1), demand("b", normal=9)],
             [node("n1", 16, [res("a", 4), res("b", 4)], [worker("w0", bound="b"), worker("w1", bound="b")])])
    # expect one of them moved to "a", and "b" keeps its full need
    assert plan(s) == [Unbind("n1", "w0", "b"), Bind("n1", "w0", "a")]


def test_gives_back_a_free_worker_made_redundant_by_a_bigger_stolen_one():
    # given "a" needs 5 slots: the free 4-slot worker is not enough, so it also steals the 8-slot one
    s = snap([model("a", 4, max_parallel=5), model("b", 4), model("idle", 4)],
             [demand("a", high=10), demand("b", low=1)],
             [node("n1", 16, [res("a", 4), res("b", 4), res("idle", 4)],
                   [worker("w4", slots=4), worker("w8", slots=8, bound="idle")])])
    # expect the 8-slot worker alone for "a" and the 4-slot one, no longer needed there, for "b"
    assert plan(s) == [Unbind("n1", "w8", "idle"), Bind("n1", "w8", "a"), Bind("n1", "w4", "b")]


def test_unbinds_workers_of_a_model_no_longer_resident_on_their_node():
    s = snap([model("gone", 4)], [demand("gone", normal=3)],
             [node("n1", 16, [], [worker("w0", bound="gone")]), node("n2", 16, [res("gone", 4)], [worker("w1")])])
    assert plan(s) == [Unbind("n1", "w0", "gone"), Bind("n2", "w1", "gone")]


def test_does_not_bind_to_a_resident_model_with_an_operation_pending_on_its_node():
    s = snap([model("a", 4)], [demand("a", normal=3)], [node("n1", 16, [res("a", 4)], pending={"a"})])
    assert plan(s) == []


# -- rejection -----------------------------------------------------------------------------------


def test_rejects_a_model_larger_than_every_node():
    s = snap([model("huge", 30)], [demand("huge", normal=2)], [node("n1", 16), node("n2", 24)])
    actions = plan(s)
    assert len(actions) == 1 and isinstance(actions[0], Reject) and actions[0].model == "huge"
    assert "largest node" in actions[0].reason


def test_rejects_a_model_that_fits_only_without_the_safety_margin():
    s = snap([model("m", 16)], [demand("m", normal=1)], [node("n1", 16)], safety_margin=1)
    assert [type(a) for a in plan(s)] == [Reject]


def test_rejects_queued_jobs_of_a_model_missing_from_the_registry():
    s = snap([], [demand("ghost", normal=1)], [node("n1", 16)])
    assert [(type(a), a.model) for a in plan(s)] == [(Reject, "ghost")]


def test_does_not_reject_a_model_that_fits_a_node_currently_full():
    s = snap([model("m", 12), model("pin", 12, pinned=True)], [demand("m", normal=1)],
             [node("n1", 12, [res("pin", 12)])])
    assert plan(s) == []


def test_rejects_nothing_while_no_node_is_known():
    assert plan(snap([model("m", 12)], [demand("m", normal=1)], [])) == []


# -- idempotency, determinism, ordering ----------------------------------------------------------


def test_does_not_repeat_a_load_that_is_still_pending():
    # given the previous tick's Load of "a" on n1 still under way
    s = snap([model("a", 4)], [demand("a", normal=3)], [node("n1", 16, pending={"a"}), node("n2", 16)])
    # expect no second copy elsewhere and nothing on n1
    assert plan(s) == []


def test_issues_no_load_or_unload_on_a_node_with_an_operation_pending():
    # given n1 busy unloading "x"; "old" idle there would otherwise be evicted
    s = snap([model("old", 6), model("new", 6)], [demand("new", normal=1)],
             [node("n1", 12, [res("old", 6), res("x", 6)], pending={"x"})])
    assert plan(s) == []


def test_still_binds_workers_on_a_node_with_an_operation_pending():
    s = snap([model("a", 4), model("b", 4)], [demand("a", normal=1)],
             [node("n1", 16, [res("a", 4)], [worker("w0")], pending={"b"})])
    assert plan(s) == [Bind("n1", "w0", "a")]


def test_replanning_after_applying_the_actions_repeats_none_of_them():
    # given a plan that evicts, loads and steals; applied as a broker would (operations become pending)
    s = snap([model("old", 6), model("new", 6), model("a", 2), model("idle", 2)],
             [demand("new", high=3), demand("a", normal=2)],
             [node("n1", 12, [res("old", 6), res("a", 2), res("idle", 2)],
                   [worker("w0", bound="idle"), worker("w1", bound="old")])])
    first = plan(s)
    again = plan(_apply_as_pending(s, first))
    # expect the first plan did things, and the replan none of them again
    assert of(Load, first) and of(Unload, first) and of(Bind, first)
    assert not set(first) & set(again), again


def test_output_is_deterministic_whatever_the_dict_order():
    models = [model(f"m{i}", 2 + i % 5) for i in range(12)]
    demands = [demand(f"m{i}", normal=i % 4, low=i % 3, wait=i * 7.0) for i in range(12)]
    nodes = [node(f"n{j}", 10, [res(f"m{j}", 2 + j % 5, last_used=j)],
                  [worker(f"n{j}-w{k}", slots=2) for k in range(3)]) for j in range(4)]
    forward = snap(models, demands, nodes)
    backward = snap(models[::-1], demands[::-1], nodes[::-1])
    assert plan(forward) == plan(backward) == plan(forward)
    assert plan(forward)  # and it decided something


def test_actions_come_ordered_unbinds_unloads_loads_binds_then_rejects():
    s = snap([model("old", 8), model("new", 8), model("a", 4), model("huge", 99)],
             [demand("new", normal=1), demand("a", normal=1), demand("huge", normal=1)],
             [node("n1", 12, [res("old", 8), res("a", 4)], [worker("w0", bound="old"), worker("w1", bound="gone")])])
    order = [Unbind, Unload, Load, Bind, Reject]
    kinds = [order.index(type(a)) for a in plan(s)]
    assert kinds == sorted(kinds) and set(kinds) == set(range(5))


# -- multi-tick simulation -----------------------------------------------------------------------


class Sim:
    """A tiny cluster: jobs take one tick, loads and unloads complete on the next tick."""

    def __init__(self, models, nodes, dt=1.0, **snapshot_kw):
        self.now = 0.0
        self.dt = dt
        self.models = {m.name: m for m in models}
        self.kw = snapshot_kw
        self.total = {n: t for n, t in nodes.items()}
        self.resident: dict[str, dict[str, Resident]] = {n: {} for n in nodes}
        self.workers: dict[str, dict[str, Worker]] = {
            n: {f"{n}-w{i}": worker(f"{n}-w{i}", slots=2) for i in range(2)} for n in nodes}
        self.pending: dict[str, dict[str, str]] = {n: {} for n in nodes}  # node -> model -> "load" / "unload"
        self.queues: dict[str, list[tuple[str, float]]] = {m: [] for m in self.models}  # (class, enqueued at)
        self.loads: list[str] = []
        self.served: dict[str, float] = {}  # model -> time its last job started

    def submit(self, name, cls, count):
        self.queues[name].extend([(cls, self.now)] * count)

    def snapshot(self) -> Snapshot:
        demands = {}
        for name, queue in self.queues.items():
            queued, oldest = {}, {}
            for cls, at in queue:
                queued[cls] = queued.get(cls, 0) + 1
                oldest[cls] = max(oldest.get(cls, 0.0), self.now - at)
            demands[name] = Demand(name, queued, oldest)
        nodes = {}
        for n, total in self.total.items():
            resident = dict(self.resident[n])
            nodes[n] = Node(n, total, total - sum(r.size for r in resident.values()), resident,
                            tuple(self.workers[n][h] for h in sorted(self.workers[n])), frozenset(self.pending[n]))
        return Snapshot(now=self.now, models=self.models, demand=demands, nodes=nodes, **self.kw)

    def tick(self):
        self.now += self.dt
        for n in self.total:
            # jobs started last tick finish
            for name, r in self.resident[n].items():
                self.resident[n][name] = replace(r, in_flight=0)
            for h, w in self.workers[n].items():
                self.workers[n][h] = replace(w, in_flight=0)
            # operations issued last tick complete
            for name, op in sorted(self.pending[n].items()):
                if op == "load":
                    self.resident[n][name] = Resident(name, self.models[name].size, self.now, self.now)
                else:
                    del self.resident[n][name]
            self.pending[n].clear()
            # bound workers on nodes where their model is resident start jobs, highest class first
            for h in sorted(self.workers[n]):
                w = self.workers[n][h]
                if w.bound is None or w.bound not in self.resident[n]:
                    continue
                r = self.resident[n][w.bound]
                queue = self.queues[w.bound]
                queue.sort(key=lambda job: (("high", "normal", "low").index(job[0]), job[1]))
                room = min(w.slots, self.models[w.bound].max_parallel - r.in_flight, len(queue))
                if room > 0:
                    del queue[:room]
                    self.resident[n][w.bound] = replace(r, in_flight=r.in_flight + room, last_used=self.now)
                    self.workers[n][h] = replace(w, in_flight=room)
                    self.served[w.bound] = self.now
        s = self.snapshot()
        actions = plan(s)
        _assert_invariants(s, actions)
        for a in actions:
            if isinstance(a, Unbind):
                self.workers[a.node][a.worker] = replace(self.workers[a.node][a.worker], bound=None)
            elif isinstance(a, Bind):
                self.workers[a.node][a.worker] = replace(self.workers[a.node][a.worker], bound=a.model)
            elif isinstance(a, Unload):
                self.pending[a.node][a.model] = "unload"
            elif isinstance(a, Load):
                self.pending[a.node][a.model] = "load"
                self.loads.append(a.model)
        return actions

    def backlog(self) -> int:
        return sum(len(q) for q in self.queues.values())


def test_simulation_drains_three_models_that_share_one_slot_with_one_load_each():
    # given one node where only one of three 6 GiB models fits, and mixed demand for all three
    sim = Sim([model("a", 6), model("b", 6), model("c", 6)], {"n1": 10 * GIB}, min_residency_s=2.0, aging_s=600.0)
    sim.submit("a", "normal", 20)
    sim.submit("b", "high", 5)
    sim.submit("c", "low", 12)
    # when ticking until everything ran
    for _ in range(60):
        sim.tick()
        if sim.backlog() == 0:
            break
    # expect every job served, each model loaded exactly once, the high-priority one first
    assert sim.backlog() == 0
    assert sorted(sim.loads) == ["a", "b", "c"]
    assert sim.loads[0] == "b"
    print(f"\n3-model simulation: drained at t={sim.now:.0f}s with loads {sim.loads}")


def test_simulation_spreads_models_over_two_nodes_and_drains_with_one_load_each():
    sim = Sim([model(m, 6) for m in "abcd"], {"n1": 13 * GIB, "n2": 13 * GIB}, min_residency_s=2.0)
    for i, m in enumerate("abcd"):
        sim.submit(m, ("high", "normal", "low")[i % 3], 8 + 4 * i)
    for _ in range(60):
        sim.tick()
        if sim.backlog() == 0:
            break
    assert sim.backlog() == 0
    assert sorted(sim.loads) == ["a", "b", "c", "d"]


def test_simulation_never_starves_a_low_priority_job_under_constant_high_priority_load():
    # given "hi" resident with a steady stream of fresh high jobs and one low job for "lo"
    sim = Sim([model("hi", 6), model("lo", 6)], {"n1": 10 * GIB}, min_residency_s=2.0, aging_s=10.0)
    sim.submit("hi", "high", 4)
    sim.submit("lo", "low", 1)
    for _ in range(100):
        sim.submit("hi", "high", 4)
        sim.tick()
        if "lo" in sim.served:
            break
    # expect "lo" served once aging made it dominate (about 4 aging periods), with few loads
    assert "lo" in sim.served, sim.loads
    assert 30.0 <= sim.served["lo"] <= 60.0
    assert sim.loads == ["hi", "lo"]


# -- speed ---------------------------------------------------------------------------------------


def _large_snapshot(seed: int = 7, n_models: int = 1000, n_nodes: int = 100) -> Snapshot:
    rng = random.Random(seed)
    models = [model(f"m{i:04d}", rng.choice([0.5, 1, 2, 4, 5, 8, 14, 20, 40]), rng.randint(1, 8),
                    pinned=rng.random() < 0.02) for i in range(n_models)]
    by_name = {m.name: m for m in models}
    order = [m.name for m in models]
    rng.shuffle(order)
    nodes, cursor = [], 0
    for j in range(n_nodes):
        total = rng.choice([24, 48, 80]) * GIB
        resident, used = [], 0
        while cursor < len(order) and used + by_name[order[cursor]].size <= total * 0.9 and len(resident) < 4:
            info = by_name[order[cursor]]
            resident.append(Resident(info.name, info.size, loaded_at=rng.uniform(0, NOW),
                                     last_used=rng.uniform(0, NOW), in_flight=rng.choice([0, 0, 0, 1, 3])))
            used += info.size
            cursor += 1
        workers = [worker(f"n{j}-w{k}", slots=rng.choice([1, 2, 4]),
                          bound=rng.choice([None, *(r.model for r in resident)])) for k in range(8)]
        pending = {order[cursor - 1]} if rng.random() < 0.1 and resident else set()
        nodes.append(Node(f"n{j:03d}", total, total - used, {r.model: r for r in resident}, tuple(workers),
                          frozenset(pending)))
    demands = [demand(m.name, high=rng.choice([0, 0, 1, 5]), normal=rng.choice([0, 3, 40]),
                      low=rng.choice([0, 10, 1000]), wait=rng.uniform(0, 400)) for m in models if rng.random() < 0.7]
    return snap(models, demands, nodes, safety_margin=GIB // 2)


# How long plan() takes on large clusters is bench.scale's to measure; these hold what it decides there.


def test_a_plan_for_1000_models_on_100_nodes_keeps_the_invariants():
    s = _large_snapshot()

    actions = plan(s)

    assert of(Load, actions) and of(Bind, actions)
    _assert_invariants(s, actions)


def test_plans_nothing_when_no_challenger_can_be_placed():
    # given every node full of pinned models: each of 1,000 demanded models fails placement
    pinned = [model(f"p{j}", 80, pinned=True) for j in range(100)]
    models = pinned + [model(f"m{i:04d}", 1 + i % 40) for i in range(1000)]
    nodes = [node(f"n{j:03d}", 80, [res(f"p{j}", 80)], [worker(f"n{j}-w{k}") for k in range(8)]) for j in range(100)]
    s = snap(models, [demand(f"m{i:04d}", normal=1 + i % 7, wait=i % 300) for i in range(1000)], nodes)

    assert plan(s) == []


def test_every_node_swaps_its_idle_model_for_a_challenger_when_backlogs_block_the_rest():
    # given 100 full nodes, each holding a 70 GiB model with a large high-priority backlog and an idle
    # 10 GiB model, and 1,000 challengers of 1..60 GiB with fresh low-priority demand
    busy = [model(f"b{j}", 70) for j in range(100)]
    sizes = {f"m{i:04d}": 1 + i % 60 for i in range(1000)}
    models = busy + [model(name, size) for name, size in sizes.items()]
    nodes = [node(f"n{j:03d}", 80, [res(f"b{j}", 70), res(f"s{j}", 10)],
                  [worker(f"n{j}-w{k}", bound=f"b{j}") for k in range(8)]) for j in range(100)]
    demands = [demand(f"b{j}", high=1000) for j in range(100)]
    demands += [demand(name, low=1 + i % 50) for i, name in enumerate(sizes)]
    s = snap(models, demands, nodes)

    actions = plan(s)

    # expect each node to swap its idle model for a challenger that fits in its place, no backlog evicted
    loads, unloads = of(Load, actions), of(Unload, actions)
    assert len({ld.node for ld in loads}) == 100 and all(sizes[ld.model] <= 10 for ld in loads)
    assert sorted(u.model for u in unloads) == sorted(f"s{j}" for j in range(100))


# -- properties ----------------------------------------------------------------------------------


@st.composite
def snapshots(draw) -> Snapshot:
    """Small random clusters: mostly consistent, often full, with pins, fresh loads, jobs in flight,
    pending operations, stale bindings, zero-slot workers and a model missing from the registry."""
    n_models = draw(st.integers(1, 8))
    models = [ModelInfo(f"m{i}", draw(st.integers(1, 10)), draw(st.integers(1, 4)), draw(st.integers(0, 4)) == 0)
              for i in range(n_models)]
    names = [m.name for m in models] + ["ghost"]
    now = 100.0
    nodes = []
    for j in range(draw(st.integers(0, 3))):
        total = draw(st.integers(4, 16))
        resident, used = {}, 0
        for m in draw(st.lists(st.sampled_from(models), max_size=4, unique_by=lambda m: m.name)):
            if used + m.size <= total:
                resident[m.name] = Resident(m.name, m.size, draw(st.sampled_from([0.0, 60.0, 95.0])),
                                            draw(st.floats(0, now)), draw(st.sampled_from([0, 0, 1, 3])))
                used += m.size
        workers = tuple(Worker(f"n{j}-w{k}", draw(st.sampled_from([0, 1, 2, 4, 4])),
                               draw(st.sampled_from([None, None, *resident, *names])))
                        for k in range(draw(st.sampled_from([0, 1, 2, 2, 3]))))
        pending = frozenset(draw(st.lists(st.sampled_from(names), max_size=2))) if draw(st.integers(0, 3)) == 0 \
            else frozenset()
        nodes.append(Node(f"n{j}", total, total - used, resident, workers, pending))
    demands = {}
    for name in names:
        if draw(st.integers(0, 3)) == 0 if name == "ghost" else draw(st.booleans()):
            queued = {c: draw(st.integers(0, 6)) for c in ("high", "normal", "low") if draw(st.booleans())}
            demands[name] = Demand(name, queued, {c: draw(st.sampled_from([0.0, 30.0, 61.0, 400.0])) for c in queued})
    return Snapshot(now=now, models={m.name: m for m in models}, demand=demands, nodes={n.name: n for n in nodes},
                    safety_margin=draw(st.integers(0, 2)), min_residency_s=draw(st.sampled_from([0.0, 10.0, 50.0])),
                    aging_s=draw(st.sampled_from([0.0, 5.0, 60.0])))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_random_snapshots_never_yield_an_action_that_breaks_an_invariant(s):
    actions = plan(s)
    _assert_invariants(s, actions)
    assert plan(s) == actions  # deterministic
    again = plan(_apply_as_pending(s, actions))
    assert not {a for a in actions if not isinstance(a, Reject)} & set(again), (actions, again)


# -- helpers -------------------------------------------------------------------------------------


def _apply_as_pending(s: Snapshot, actions) -> Snapshot:
    """The next tick's snapshot as a broker would see it: bindings applied, loads/unloads under way."""
    nodes = dict(s.nodes)
    for name, n in s.nodes.items():
        bound = {w.hostname: w.bound for w in n.workers}
        pending = set(n.pending)
        for a in actions:
            if getattr(a, "node", None) != name:
                continue
            if isinstance(a, Unbind):
                bound[a.worker] = None
            elif isinstance(a, Bind):
                bound[a.worker] = a.model
            elif isinstance(a, (Load, Unload)):
                pending.add(a.model)
        nodes[name] = replace(n, workers=tuple(replace(w, bound=bound[w.hostname]) for w in n.workers),
                              pending=frozenset(pending))
    return replace(s, nodes=nodes)


def _assert_invariants(s: Snapshot, actions) -> None:
    """What every plan must respect, whatever the snapshot."""
    order = [Unbind, Unload, Load, Bind, Reject]
    kinds = [order.index(type(a)) for a in actions]
    assert kinds == sorted(kinds), actions
    assert len(set(actions)) == len(actions), actions

    largest = max((n.total for n in s.nodes.values()), default=None)
    present = {m for n in s.nodes.values() for m in (*n.resident, *n.pending)}
    unloads = {(a.node, a.model) for a in of(Unload, actions)}
    loads = of(Load, actions)
    unbinds = {(a.node, a.worker): a.model for a in of(Unbind, actions)}
    rebound = {(a.node, a.worker) for a in of(Bind, actions)}
    assert len(unbinds) == len(of(Unbind, actions)), "a worker unbound twice"
    assert len(rebound) == len(of(Bind, actions)), "a worker bound twice"
    assert len({a.node for a in loads}) == len(loads), "two loads on one node"
    assert len({a.model for a in loads}) == len(loads), "two copies of one model"

    for a in of(Unload, actions):
        n, info = s.nodes[a.node], s.models.get(a.model)
        r = n.resident.get(a.model)
        assert r is not None, f"unload of a model not resident: {a}"
        assert not (info and info.pinned), f"unload of a pinned model: {a}"
        assert r.in_flight == 0, f"unload with jobs in flight: {a}"
        assert s.now - r.loaded_at >= s.min_residency_s, f"unload of a fresh model: {a}"
        assert not n.pending, f"unload on a node with an operation pending: {a}"
        assert any(ld.node == a.node for ld in loads), f"unload that makes room for nothing: {a}"

    for a in loads:
        n, info = s.nodes[a.node], s.models.get(a.model)
        assert info is not None and a.model not in present, a
        assert s.demand[a.model].total > 0, f"load without demand: {a}"
        assert not n.pending and n.workers, a
        freed = sum(n.resident[m].size for (node_name, m) in unloads if node_name == a.node)
        assert info.size + s.safety_margin <= n.free + freed, f"load that does not fit: {a}"

    for (node_name, host), m in unbinds.items():
        n = s.nodes[node_name]
        w = next(w for w in n.workers if w.hostname == host)
        assert w.bound == m, f"unbind of a worker not bound to {m}"
        if m in n.resident and (node_name, m) not in unloads and (node_name, host) not in rebound:
            # neither stale, nor evicted, nor moved: a drain, only of a model the policy may evict, before a Load
            info = s.models.get(m)
            assert not (info and info.pinned), f"drain of a pinned model: {host} from {m}"
            assert s.now - n.resident[m].loaded_at >= s.min_residency_s, f"drain of a fresh model: {host} from {m}"
            assert not n.pending and not any(ld.node == node_name for ld in loads), (host, m)

    for a in of(Bind, actions):
        n = s.nodes[a.node]
        w = next(w for w in n.workers if w.hostname == a.worker)
        assert a.model in n.resident and a.model not in n.pending, f"bind to a model not resident there: {a}"
        assert (a.node, a.model) not in unloads, f"bind to a model being unloaded: {a}"
        assert w.bound is None or (a.node, a.worker) in unbinds, f"bind of a worker still bound elsewhere: {a}"
        assert w.slots > 0 and s.demand[a.model].total > 0, a

    for a in of(Reject, actions):
        info = s.models.get(a.model)
        assert s.demand[a.model].total > 0 and a.model not in present, a
        assert info is None or (largest is not None and info.size + s.safety_margin > largest), a
