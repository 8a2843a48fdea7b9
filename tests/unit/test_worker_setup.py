"""How a Celery process must be started for its mm role (pure code)."""

from __future__ import annotations

from mm.settings import Settings
from mm.worker_setup import Started, problems

SETTINGS = Settings(node="gpu-a", worker_slots=4)


def test_a_gpu_broker_started_as_documented_has_no_problem():
    assert problems(Started("thread", 1, frozenset({"mm.node.gpu-a", "mm.beat"})), SETTINGS) == []


def test_a_gpu_broker_on_the_prefork_pool_is_told_to_use_threads():
    found = problems(Started("prefork", 1, frozenset({"mm.node.gpu-a", "mm.beat"})), SETTINGS)

    assert len(found) == 1 and "-P threads" in found[0] and "prefork" in found[0]
    assert "celery -A mm.app worker -Q mm.node.gpu-a,mm.beat -c 1 -P threads" in found[0]


def test_a_gpu_broker_with_more_slots_or_another_nodes_queue_is_refused():
    found = problems(Started("thread", 4, frozenset({"mm.node.gpu-b"})), SETTINGS)

    assert any("-c 1" in p and "-c 4" in p for p in found)
    assert any("mm.node.gpu-b" in p and "MM_NODE is 'gpu-a'" in p for p in found)


def test_a_model_worker_needs_threads_its_slots_and_no_model_queue_by_hand():
    assert problems(Started("thread", 4, frozenset({"mm.default"})), SETTINGS) == []

    found = problems(Started("prefork", 3, frozenset({"mm.model.gemma3:270m"})), SETTINGS)

    assert len(found) == 3
    assert "-P threads" in found[0]
    assert "-c 3" in found[1] and "MM_WORKER_SLOTS is 4" in found[1]
    assert "mm.model.gemma3:270m" in found[2] and "the leader binds" in found[2]
