"""A node set up wrongly says so with the fix: at start (two nodes under one name, contradicting
settings), in `mm check` and its published state (a runtime URL that is not an Ollama API, a runtime
with no models, a memory budget larger than the runtime holds)."""

from __future__ import annotations

import os
import subprocess
import sys

import mm
from tests.integration.test_worker_setup import celery_worker
from tests.procs import Proc, free_port, wait_for
from tests.runtime_server import start_runtime
from tests.stack import REPO, Stack, sim_node
from tests.support import GB, sim_model

MODEL = sim_model("setup-a:1b", eval_rate=2000)
SHORT = {"num_predict": 4}


def mm_check(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "check", *args],
                          capture_output=True, text=True, timeout=60,
                          env=os.environ | {"MM_REDIS_URL": redis_url} | env, cwd=str(REPO))


def test_a_second_node_under_a_taken_name_refuses_to_start(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB) as stack:
        other = celery_worker(tmp_path, redis_url, "broker2", "-Q", "mm.node.n1,mm.beat", "-c", "1", "-P", "threads",
                              MM_RUNTIME_URL="http://127.0.0.1:9", MM_HEARTBEAT_S="0.3")
        try:
            wait_for(lambda: not other.alive(), 60, what="the second n1 to stop")
        finally:
            other.stop()
        assert stack.node_state()["runtime_url"] == stack.runtime.url  # the first one kept its state
        check = mm_check(redis_url)

    says = "another node already runs as MM_NODE='n1'"
    assert other.popen.returncode != 0 and says in other.output() and "give each node its own MM_NODE" in other.output()
    assert check.returncode == 1 and "broker2@n1 refused to start" in check.stderr and says in check.stderr


def test_settings_that_contradict_each_other_stop_workers_and_mm_check_naming_both(tmp_path, redis_url):
    bad = {"MM_HEARTBEAT_S": "3", "MM_STATE_TTL_S": "5"}
    worker = celery_worker(tmp_path, redis_url, "model-1", "-P", "threads", "-c", "4", **bad)
    try:
        wait_for(lambda: not worker.alive(), 60, what="the worker to stop")
    finally:
        worker.stop()
    check = mm_check(redis_url, **bad)

    says = "MM_STATE_TTL_S (5.0) must be at least twice MM_HEARTBEAT_S (3.0)"
    assert worker.popen.returncode != 0 and says in worker.output()
    assert check.returncode == 1 and f"bad settings: {says}" in check.stderr and "Traceback" not in check.stderr


def test_a_runtime_url_that_is_not_an_ollama_api_is_named_so(tmp_path, redis_url):
    port = free_port()
    web = Proc([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], log=tmp_path / "web.log",
               cwd=str(tmp_path))
    stack = Stack(tmp_path, redis_url, f"http://127.0.0.1:{port}", memory_budget=4 * GB)
    try:
        stack.start_broker()
        state = wait_for(stack.node_state, 60, what="the node's state")
        check = mm_check(redis_url, "--node", "n1")
    finally:
        stack.stop()
        web.stop()

    says = f"MM_RUNTIME_URL http://127.0.0.1:{port} answers HTTP but is not an Ollama API (GET /api/ps: 404)"
    assert not state["runtime_up"] and says in state["runtime_error"]
    assert check.returncode == 1 and says in check.stderr


def test_a_runtime_with_no_models_is_a_warning_in_mm_check(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[sim_model("later:1b", pulled=False)], memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    try:
        stack.start_broker()
        wait_for(lambda: (stack.node_state() or {}).get("warnings"), 60, what="the node's warning")
        check = mm_check(redis_url)
    finally:
        stack.stop()
        runtime.stop()

    assert check.returncode == 0, check.stderr  # a node waiting for its first pull is not down
    assert f"warning: node n1: the runtime at {runtime.url} lists no models" in check.stderr


def test_a_memory_budget_larger_than_the_runtime_holds_is_learned_once_and_reported(tmp_path, redis_url):
    models = [sim_model(f"budget-{n}:1b", eval_rate=2000) for n in "abc"]
    runtime = start_runtime(tmp_path, engine="sim", models=models, memory=int(2.5 * GB))
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=8 * GB, safety_margin=0, min_residency_s=0,
                  size_multiplier=1)
    try:
        stack.start_broker()
        stack.start_worker("w1")
        stack.wait_ready([m["name"] for m in models], ["w1"])
        results = [mm.generate(m["name"], f"fill {m['name']}", options=SHORT, timeout=90) for m in models]
        state = stack.node_state()
        check = mm_check(redis_url)
        broker_log = stack.procs["broker"].output()
    finally:
        stack.stop()
        runtime.stop()

    assert all(r["response"] for r in results)  # the third still ran: a model made room for it
    assert broker_log.count("LOAD budget-c:1b out of memory") == 1  # the failing load was not retried as it was
    assert state["memory"]["total"] < 2.5 * GB and [w.split(" ")[0] for w in state["warnings"]] == ["MM_MEMORY_BUDGET"]
    assert check.returncode == 0 and "MM_MEMORY_BUDGET (7.5 GiB) is more than the runtime can load" in check.stderr
