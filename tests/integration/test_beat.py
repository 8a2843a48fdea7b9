"""Beat end to end: idle shutdown through the leader's fenced path, activity, and beat as a singleton.

Real redis-server, real Celery worker and beat processes, the embedded runtime's sim engine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import redis
from click.testing import CliRunner

import mm
from mm import activity, events, keys
from mm import settings as mm_settings
from mm.app import app
from mm.beat import schedule, singleton
from mm.cli import main as cli
from mm.errors import UnknownModel
from tests.procs import Proc, wait_for
from tests.stack import REPO, sim_node
from tests.support import GB, sim_model

IDLE_S = 2.0
QUICK = sim_model("", load_bandwidth=8 * GB, eval_rate=2000)
MODELS = [QUICK | {"name": n} for n in ("idle-a:1b", "active-b:1b", "pinned-c:1b", "warm-e:1b")]
MODELS.append(QUICK | {"name": "busy-d:1b", "eval_rate": 20})  # 200 tokens: 10 s in flight


@pytest.fixture
def node(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, MODELS, 8 * GB, workers=("w1", "w2"), idle_threshold_s=IDLE_S,
                  pinned_models="pinned-c:1b", warm_pool="warm-e:1b") as stack:
        yield stack


def run_beat_task(name: str, timeout: float = 30) -> dict:
    """Send periodic task ``name`` by hand (no slot) to the beat queue and wait for its result."""
    return app.send_task(name, queue=keys.BEAT_QUEUE).get(timeout=timeout)


def test_an_idle_model_is_unloaded_while_active_pinned_warm_and_busy_ones_stay(node, monkeypatch):
    r = node.r
    settings = mm_settings.load(idle_threshold_s=IDLE_S, active_window_s=IDLE_S, warm_pool="warm-e:1b")
    monkeypatch.setattr(mm_settings, "_current", settings)  # the CLI, in this process, as the broker sees it
    quick = ["idle-a:1b", "active-b:1b", "pinned-c:1b", "warm-e:1b"]
    for job in [mm.submit(m, "hello", options={"num_predict": 4}) for m in quick]:
        job.get(timeout=60)
    busy = mm.submit("busy-d:1b", "a long one", options={"num_predict": 200})
    wait_for(lambda: busy.status() == "running", 30, what="the long job to run")
    assert sorted(node.resident()) == sorted(quick + ["busy-d:1b"])
    # Every model unused past the threshold; then active-b is used (a manual report).
    wait_for(lambda: all(m.idle for m in activity.activity(r, settings) if m.model != "active-b:1b"), 30,
             what="models to go idle")
    activity.report(r, "active-b:1b")
    active = [line.split()[0] for line in CliRunner().invoke(cli, ["models", "active"]).output.splitlines()[1:]]
    assert active == ["active-b:1b"]
    idle = [line.split()[0] for line in CliRunner().invoke(cli, ["models", "idle"]).output.splitlines()[1:]]
    assert sorted(idle) == ["busy-d:1b", "idle-a:1b", "pinned-c:1b", "warm-e:1b"]

    outcome = run_beat_task(schedule.IDLE_SHUTDOWN)

    assert outcome["requested"] == ["n1|idle-a:1b"]
    assert outcome["kept"] == {"active-b:1b": "used recently", "pinned-c:1b": "pinned",
                               "warm-e:1b": "warm pool", "busy-d:1b": "jobs in flight"}
    wait_for(lambda: "idle-a:1b" not in node.resident(), 30, what=f"idle-a to be unloaded ({node.logs()})")
    # The node publishes its state before it records the unload event: wait for the event too.
    unloads = wait_for(lambda: [e for e in events.recent(r, 100) if e["kind"] == "unload"], 10, what="the unload event")
    assert [(e["model"], e["reason"].split(":")[0]) for e in unloads] == [("idle-a:1b", "idle shutdown")]
    assert sorted(node.resident()) == sorted(["active-b:1b", "pinned-c:1b", "warm-e:1b", "busy-d:1b"])
    assert busy.get(timeout=60)["timings"]["eval_tokens"] == 200

    # The CLI shows the same data: idle-a no longer resident, the others where they are, with sizes and flags.
    shown = {m["model"]: m for m in json.loads(CliRunner().invoke(cli, ["models", "activity", "--json"]).output)}
    assert shown["idle-a:1b"]["resident_on"] == [] and shown["busy-d:1b"]["resident_on"] == ["n1"]
    assert shown["busy-d:1b"]["size"] == GB and shown["pinned-c:1b"]["pinned"] and shown["warm-e:1b"]["warm"]

    # The activity report (log and event stream) says the same.
    outcome = run_beat_task(schedule.ACTIVITY_REPORT)

    reported = [e for e in events.recent(r, 50) if e["kind"] == "activity"]
    assert len(reported) == 1 and reported[0]["idle"] == outcome["idle"]
    assert "idle-a:1b" in outcome["idle"] and "idle-a:1b" not in outcome["resident"]
    assert outcome["resident"]["busy-d:1b"] == ["n1"]
    assert "ACTIVITY active" in (node.tmp / "broker.log").read_text()


def test_a_manual_report_marks_a_known_model_used_and_refuses_an_unknown_one(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.hset(keys.MODELS, "known:1b", json.dumps({"name": "known:1b", "tag_size": 1, "size_estimate": 1}))

    result = CliRunner().invoke(cli, ["models", "report", "known:1b"])

    assert result.exit_code == 0, result.output
    assert time.time() - activity.last_used(r)["known:1b"] < 5
    with pytest.raises(UnknownModel):
        activity.report(r, "nope:1b")
    assert CliRunner().invoke(cli, ["models", "report", "nope:1b"]).exit_code == 1


def test_two_beats_run_each_periodic_job_once_per_slot(tmp_path, redis_url):
    r = redis.Redis.from_url(redis_url)
    env = os.environ | {"MM_REDIS_URL": redis_url, "MM_USE_NVML": "0", "PYTHONPATH": str(REPO),
                        "MM_IDLE_CHECK_S": "1", "MM_METRICS_ROLLUP_S": "1", "MM_ALERT_CHECK_S": "1",
                        "MM_ACTIVITY_REPORT_S": "1", "MM_WORKER_SLOTS": "2"}
    celery = [sys.executable, "-m", "celery", "-A", "mm.app"]
    procs = [Proc([*celery, "worker", "-Q", keys.BEAT_QUEUE, "-P", "threads", "-c", "2", "-n", "beatworker@t",
                   "--without-gossip", "--without-mingle", "-l", "INFO"], log=tmp_path / "worker.log", env=env,
                  cwd=str(REPO))]
    for i in (1, 2):
        (tmp_path / f"beat{i}").mkdir()
        procs.append(Proc([*celery, "beat", "-l", "INFO"], log=tmp_path / f"beat{i}.log", env=env,
                          cwd=str(tmp_path / f"beat{i}")))
    try:
        def sends() -> list[int]:
            return [p.output().count("Sending due task") for p in procs[1:]]

        # Both beats sending, then at least 4 more slots of every task.
        wait_for(lambda: min(sends()) >= 4, 60, what=f"both beats to send ({tmp_path})")
        both_from = time.time()
        wait_for(lambda: all(sum(1 for run in singleton.runs(r) if run["task"] == task and run["at"] > both_from) >= 4
                             for task in schedule.INTERVAL_SETTINGS), 60, what="4 more runs of each task")
    finally:
        for proc in procs[1:]:
            proc.stop()
    try:
        # The messages already sent are run or skipped (or expire) before counting.
        wait_for(lambda: sum(r.llen(k) for k in r.keys(f"{keys.BEAT_QUEUE}*")) == 0, 30, what="the beat queue to drain")
    finally:
        procs[0].stop()

    runs = singleton.runs(r)
    per_slot = Counter((run["task"], run["slot"]) for run in runs)
    assert per_slot and max(per_slot.values()) == 1, [k for k, n in per_slot.items() if n > 1]
    assert all(run["slot"] is not None for run in runs)
    for task in schedule.INTERVAL_SETTINGS:
        assert len({slot for t, slot in per_slot if t == task}) >= 4
    # Both beats sent every task: the second message of a slot was skipped, not run.
    skipped = singleton.skipped(r)
    assert all(skipped.get(task, 0) >= 2 for task in schedule.INTERVAL_SETTINGS), skipped
    assert all(n >= 4 for n in sends())


def test_idle_shutdown_leaves_a_model_with_queued_jobs_and_asks_for_the_rest(redis_url):
    r = redis.Redis.from_url(redis_url)
    now = time.time()
    resident = [{"model": m, "size": GB, "loaded_at": now - 100} for m in ("old-a:1b", "queued-b:1b")]
    r.set(keys.node_state("n9"), json.dumps({"node": "n9", "resident": resident, "memory": {}}))
    r.zadd(keys.NODES, {"n9": now})
    for m in ("old-a:1b", "queued-b:1b"):
        r.hset(keys.MODELS, m, json.dumps({"name": m, "tag_size": GB, "size_estimate": GB}))
    r.lpush(keys.priority_list("queued-b:1b", 9), json.dumps({"headers": {"mm_submitted": now - 50}}))

    outcome = activity.idle_shutdown(r, mm_settings.load(idle_threshold_s=30.0), now=now)

    assert outcome == {"requested": ["n9|old-a:1b"], "kept": {"queued-b:1b": "jobs queued"}}
    assert r.hgetall(keys.UNLOAD_REQUESTS) == {b"n9|old-a:1b": b"idle shutdown: idle 100s"}


def test_every_beat_puts_a_task_in_the_same_slot_on_the_wall_clock_grid():
    every_10s = schedule.aligned(10)
    now = time.time()
    boundary = (now // 10) * 10

    due, wait = every_10s.is_due(datetime.fromtimestamp(boundary - 0.5, UTC))
    assert due and 0 < wait <= 10
    due, wait = every_10s.is_due(datetime.fromtimestamp(boundary + 0.001, UTC))
    assert not due and wait == pytest.approx(boundary + 10 - time.time(), abs=0.05)
    assert schedule.slot_of(boundary + 9.99, 10) == schedule.slot_of(boundary, 10) == int(boundary // 10)
    with pytest.raises(ValueError, match="MM_ALERT_CHECK_S"):
        schedule.build(mm_settings.load(alert_check_s=0.0))
