"""Placement strategies and replicas of hot models (pure policy)."""

from mm.scheduling.policy import plan
from mm.scheduling.snapshot import Demand, Load, ModelInfo, Node, Resident, Snapshot, Worker
from tests.support import GB


def node(name, free, total=24 * GB, resident=None):
    return Node(name, total, free, resident or {}, (Worker(f"w@{name}", 4),))


def snapshot(nodes, demand, models, **kwargs):
    return Snapshot(now=1000.0, models=models, demand=demand, nodes={n.name: n for n in nodes}, **kwargs)


MODELS = {"a": ModelInfo("a", 2 * GB, max_parallel=2), "b": ModelInfo("b", 2 * GB, max_parallel=2)}


def loads(actions):
    return sorted((a.node, a.model) for a in actions if isinstance(a, Load))


def test_spread_places_a_model_on_the_node_with_the_most_free_memory():
    s = snapshot([node("big", 20 * GB), node("small", 3 * GB)], {"a": Demand("a", {"normal": 1})}, MODELS)
    assert loads(plan(s)) == [("big", "a")]


def test_binpack_places_a_model_on_the_tightest_node_that_fits():
    s = snapshot([node("big", 20 * GB), node("small", 3 * GB)], {"a": Demand("a", {"normal": 1})}, MODELS,
                 placement="binpack")
    assert loads(plan(s)) == [("small", "a")]


def resident_a(name):
    return {"a": Resident("a", 2 * GB, loaded_at=0.0, last_used=999.0, in_flight=2)}


def test_a_hot_model_gets_a_replica_where_it_fits_in_free_memory():
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 20 * GB)],
                 {"a": Demand("a", {"normal": 40})}, MODELS, replica_backlog=4)
    assert loads(plan(s)) == [("n2", "a")]


def test_a_modest_backlog_gets_no_replica():
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 20 * GB)],
                 {"a": Demand("a", {"normal": 8})}, MODELS, replica_backlog=4)
    assert loads(plan(s)) == []


def test_replicas_never_evict_and_never_move_a_model_in_use():
    busy_b = {"b": Resident("b", 2 * GB, loaded_at=0.0, last_used=999.0, in_flight=1)}
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 1 * GB, resident=busy_b)],
                 {"a": Demand("a", {"normal": 400})}, MODELS, replica_backlog=4)
    actions = plan(s)
    assert loads(actions) == []
    assert not [a for a in actions if type(a).__name__ in ("Unload", "Unbind")]


def test_a_replica_takes_the_place_of_idle_models_when_no_node_has_free_memory():
    idle = {"b": Resident("b", 2 * GB, loaded_at=0.0, last_used=10.0, in_flight=0),
            "c": Resident("c", 2 * GB, loaded_at=0.0, last_used=500.0, in_flight=0)}
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 1 * GB, resident=idle)],
                 {"a": Demand("a", {"normal": 400})}, MODELS | {"c": ModelInfo("c", 2 * GB)},
                 replica_backlog=4, safety_margin=0)
    actions = plan(s)
    assert loads(actions) == [("n2", "a")]
    # Only the least recently used idle model goes: it frees enough.
    assert [(a.node, a.model) for a in actions if type(a).__name__ == "Unload"] == [("n2", "b")]


def test_a_replica_never_evicts_a_model_with_queued_jobs():
    queued_b = {"b": Resident("b", 2 * GB, loaded_at=0.0, last_used=10.0, in_flight=0)}
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 1 * GB, resident=queued_b)],
                 {"a": Demand("a", {"normal": 400}), "b": Demand("b", {"low": 1})}, MODELS,
                 replica_backlog=4, safety_margin=0)
    actions = plan(s)
    assert loads(actions) == []
    assert not [a for a in actions if type(a).__name__ in ("Unload", "Unbind")]


def test_replicas_are_off_by_default():
    s = snapshot([node("n1", 10 * GB, resident=resident_a("n1")), node("n2", 20 * GB)],
                 {"a": Demand("a", {"normal": 400})}, MODELS)
    assert loads(plan(s)) == []
