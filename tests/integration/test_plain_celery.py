"""Plain Celery clients: a stock ``Celery()`` app (no mm import, no transport options) sends jobs.

Real redis-server, real Celery worker processes, the embedded runtime's sim engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from celery import Celery

from mm import keys, registry
from mm.app import INFER_TASK, app
from mm.scheduling.reader import read_demand
from tests.procs import wait_for
from tests.stack import REPO, sim_node
from tests.support import GB, sim_model

MODEL = sim_model("sim-a:1b", load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=5_000, parallel=4)
EMBEDDER = sim_model("sim-embed:1b", load_bandwidth=4 * GB, kind="embed", embedding_dim=8)
REQUEST = {"model": MODEL["name"], "prompt": "hello", "options": {"num_predict": 4, "seed": 1}}


@pytest.fixture
def stock(redis_url):
    """A Celery client configured as its own project would be: a broker, a backend, nothing of mm's."""
    client = Celery("plain", broker=redis_url, backend=redis_url)
    yield client
    client.close()


def test_stock_client_jobs_at_every_priority_are_counted_then_run(tmp_path, redis_url, stock, redis_server):
    # Given jobs sent by a stock client at priorities across kombu's range, before any node runs
    priorities = [0, 3, 5, 6, 9]
    results = [stock.send_task(INFER_TASK, kwargs={"request": REQUEST}, queue=keys.model_queue(MODEL["name"]),
                               priority=p) for p in priorities]
    r = app.backend.client
    # Expect the leader's demand reading to count every one of them, by class
    demand = read_demand(r, [MODEL["name"]], now=0)[MODEL["name"]]
    assert demand.queued == {"high": 1, "normal": 2, "low": 2}
    # And, once a node is up, every job to run
    with sim_node(tmp_path, redis_url, [MODEL], 2 * GB):
        outputs = [res.get(timeout=60) for res in results]
    assert all(out["response"] for out in outputs)
    assert {r.hget(keys.job(res.id), "status") for res in results} == {b"complete"}
    assert {r.hget(keys.job(res.id), "priority") for res in results} == {b"high", b"normal", b"low"}


def test_jobs_sent_without_a_queue_are_forwarded_to_their_model(tmp_path, redis_url, stock):
    with sim_node(tmp_path, redis_url, [MODEL], 2 * GB):
        # Given a stock client's job on Celery's default queue, and one positional (no submitted_at)
        default = stock.send_task(INFER_TASK, kwargs={"request": REQUEST})
        positional = stock.send_task(INFER_TASK, args=[REQUEST])
        # And one sent through mm's app, whose router picks the queue
        routed = app.send_task(INFER_TASK, kwargs={"request": REQUEST | {"priority": "low"}})
        # Expect each to run once, on the model's node
        for res in (default, positional, routed):
            assert res.get(timeout=60)["model"] == MODEL["name"]
    assert routed.ready()
    assert app.backend.client.hget(keys.job(routed.id), "priority") == b"low"


def test_a_job_with_mm_header_and_no_submitted_at_takes_its_submit_time_from_the_header(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 2 * GB):
        sent_at = time.time()
        res = app.send_task(INFER_TASK, kwargs={"request": REQUEST | {"kind": "generate"}},
                            queue=keys.model_queue(MODEL["name"]),
                            priority=keys.PRIORITIES["normal"], headers={"mm_submitted": sent_at})
        out = res.get(timeout=60)
    assert out["response"] and out["timings"]["queue_wait_s"] >= 0


def test_router_puts_infer_on_its_model_queue_and_beat_tasks_on_the_beat_queue():
    router = app.amqp.router
    assert router.route({}, INFER_TASK, (), {"request": REQUEST})["queue"].name == keys.model_queue(MODEL["name"])
    assert router.route({}, INFER_TASK, (), {"request": REQUEST})["priority"] == keys.PRIORITIES["normal"]
    # a caller's own queue wins
    assert router.route({"queue": "elsewhere"}, INFER_TASK, (), {"request": REQUEST})["queue"].name == "elsewhere"
    assert router.route({}, "mm.beat.rollup", (), {})["queue"].name == keys.BEAT_QUEUE


MALFORMED = [
    ({"model": MODEL["name"]}, "prompt"),
    ({"model": MODEL["name"], "prompt": "x", "priority": "urgent"}, "priority"),
    ({"model": "no-such-model:1b", "prompt": "x"}, "unknown model"),
    ({"model": MODEL["name"], "prompt": "x", "colour": "blue"}, "colour"),
    ("just a string", "request"),
    ({"model": EMBEDDER["name"], "prompt": "x"}, "does not support generate"),
]


def test_malformed_plain_jobs_fail_at_once_with_the_validation_message(tmp_path, redis_url, stock):
    with sim_node(tmp_path, redis_url, [MODEL, EMBEDDER], 2 * GB) as stack:
        # The node agent learns each model's capabilities from the runtime's /api/show.
        wait_for(lambda: (e := registry.get(stack.r, EMBEDDER["name"])) and e.capabilities, 30, what="capabilities")
        for request, reason in MALFORMED:
            for queue in (None, keys.model_queue(MODEL["name"])):  # the intake, and a model-worker
                res = stock.send_task(INFER_TASK, args=[request], queue=queue)
                with pytest.raises(Exception) as failure:
                    res.get(timeout=30)
                assert "invalid request" in str(failure.value) and reason in str(failure.value)
                record = stack.r.hgetall(keys.job(res.id))
                assert record[b"status"] == b"failed" and reason in record[b"error"].decode()
                assert b"started_at" not in record  # it never ran


@pytest.mark.slow
def test_readme_snippet_runs_in_a_venv_holding_only_celery(tmp_path, redis_url):
    """The README's plain-Celery section, run as a user would: a venv with only celery[redis]."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "celery[redis]"], check=True, timeout=600)
    snippet = readme_block("plain-celery")
    project = tmp_path / "project"
    project.mkdir()
    (project / "celeryconfig.py").write_text((REPO / "celeryconfig.py").read_text())
    (project / "client.py").write_text(snippet.replace("gemma3:270m", MODEL["name"]))
    with sim_node(tmp_path, redis_url, [MODEL], 2 * GB):
        out = subprocess.run([python, "client.py"], cwd=project, capture_output=True, text=True, timeout=120,
                             env={"PATH": os.environ["PATH"], "MM_REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def readme_block(name: str) -> str:
    """The Python block that follows ``<!-- test: name -->`` in the README."""
    text = (REPO / "README.md").read_text()
    marker = f"<!-- test: {name} -->"
    assert marker in text, f"README has no {marker}"
    block = text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_plain_celery_client_needs_no_mm(tmp_path):
    """The client config in the repository imports nothing of mm's."""
    code = "import sys, celeryconfig; assert not any(m == 'mm' or m.startswith('mm.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert Path(REPO / "celeryconfig.py").exists()
