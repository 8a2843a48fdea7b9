"""Two GPU hosts on one machine: each its own runtime, memory budget, gpu-broker and model-worker; one leader."""

from __future__ import annotations

import signal

import pytest

import mm
from mm import keys
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

MODELS = [sim_model(n, load_bandwidth=10 * GB, eval_rate=400, parallel=4)
          for n in ("mn-a:1b", "mn-b:1b")]
MEMORY = 1_800_000_000  # one model per node
OPTS = {"num_predict": 20}


def start_nodes(tmp_path, redis_url, memory, **settings):
    """n1 and n2, each with its own runtime, gpu-broker and model-worker; returns [(stack, runtime)]."""
    started = []
    try:
        for name in ("n1", "n2"):
            folder = tmp_path / name
            folder.mkdir()
            runtime = start_runtime(folder, engine="sim", models=MODELS, memory=memory)
            stack = Stack(folder, redis_url, runtime.url, node=name, memory_budget=memory, safety_margin=0,
                          **settings)
            started.append((stack, runtime))
            stack.start_broker()
            stack.start_worker("w", slots=2)
        for stack, _ in started:
            stack.wait_ready([m["name"] for m in MODELS], ["w"])
    except BaseException:
        stop_nodes(started)
        raise
    return started


def stop_nodes(started):
    for stack, runtime in started:
        stack.stop()
        runtime.stop()


@pytest.fixture
def nodes(tmp_path, redis_url):
    started = start_nodes(tmp_path, redis_url, MEMORY)
    yield started
    stop_nodes(started)


def test_the_leader_places_two_models_on_two_nodes_and_both_serve(nodes):
    jobs = [mm.submit(m["name"], f"job {i}", options=OPTS) for i in range(6) for m in MODELS]

    results = [job.get(timeout=90) for job in jobs]

    placed = {r["model"]: {x["node"] for x in results if x["model"] == r["model"]} for r in results}
    assert placed["mn-a:1b"].isdisjoint(placed["mn-b:1b"]), placed
    assert sorted(sum((s.resident() for s, _ in nodes), [])) == ["mn-a:1b", "mn-b:1b"]
    assert len(nodes[0][0].r.zrange(keys.NODES, 0, -1)) == 2


def test_killing_a_node_loses_no_job_and_its_model_moves_to_the_other(nodes):
    (n1, _), (n2, rt2) = nodes
    warm = [mm.submit(m["name"], "warm up", options=OPTS) for m in MODELS]
    by_node = {r["node"]: r["model"] for r in (j.get(timeout=90) for j in warm)}
    model_on_n2 = by_node["n2"]
    jobs = [mm.submit(model_on_n2, f"after {i}", options={"num_predict": 200}) for i in range(6)]
    wait_for(lambda: any(j.status() == "running" for j in jobs), 30, what="a job to run on n2")

    for proc in n2.procs.values():
        proc.signal(signal.SIGKILL)
    rt2.proc.signal(signal.SIGKILL)

    results = [job.get(timeout=120) for job in jobs]
    assert "n1" in {r["node"] for r in results}  # the model moved to the surviving node
    assert all(job.status() == "complete" for job in jobs)


def test_a_hot_model_gets_a_replica_on_the_other_node_and_both_copies_serve(tmp_path, redis_url):
    started = start_nodes(tmp_path, redis_url, 4 * GB, replica_backlog=2, default_max_parallel=2)
    try:
        jobs = [mm.submit("mn-a:1b", f"hot {i}", options={"num_predict": 100}) for i in range(40)]

        results = [job.get(timeout=120) for job in jobs]

        assert {r["node"] for r in results} == {"n1", "n2"}
        assert all("mn-a:1b" in stack.resident() for stack, _ in started)
    finally:
        stop_nodes(started)


def test_a_node_that_returns_is_reconciled_and_what_it_still_holds_is_unloaded(nodes):
    (n1, _), (n2, _) = nodes
    first = mm.generate("mn-a:1b", "place me", options=OPTS, timeout=60)
    home, other = (n1, n2) if first["node"] == "n1" else (n2, n1)

    home.procs["broker"].signal(signal.SIGSTOP)  # the node falls silent; its runtime keeps the model
    wait_for(lambda: home.node_state() is None, 30, what="the silent node's state to expire")
    wait_for(lambda: home.node in {m.decode() for m in home.r.smembers(keys.LOST_NODES)}, 30,
             what="the leader to note the node lost")
    moved = mm.generate("mn-a:1b", "where now?", options=OPTS, timeout=60)
    assert moved["node"] == other.node
    home.procs["broker"].signal(signal.SIGCONT)

    wait_for(lambda: home.node_state() and "mn-a:1b" not in home.resident(), 60,
             what="the returning node to be reconciled")
    assert "mn-a:1b" in other.resident()
