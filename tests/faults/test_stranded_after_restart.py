"""Just after a Redis restart the leader does not judge held jobs stranded: a worker that took a job
just before the restart counts it in flight only once Redis is back (found by the chaos soak, where
such a job was requeued and ran twice)."""

from __future__ import annotations

import json
import time

import pytest
import redis

from mm import keys
from mm.app import app
from mm.settings import load
from mm.workers.leader import Leader
from tests.procs import wait_for

GRACE_S = 2.0
QUEUE = keys.model_queue("held:1b")


@pytest.fixture
def restarted(redis_url, redis_server):
    redis_server.restart()
    yield redis.Redis.from_url(redis_url)
    redis_server.restart()


def hold(r: redis.Redis, job_id: str, delivered_ago_s: float) -> None:
    """A message kombu holds as delivered ``delivered_ago_s`` ago, its job marked running."""
    message = {"properties": {"delivery_tag": job_id, "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE}},
               "headers": {"id": job_id}, "body": ""}
    r.hset("unacked", job_id, json.dumps([message, QUEUE, QUEUE]))
    r.zadd("unacked_index", {job_id: time.time() - delivered_ago_s})
    r.hset(keys.job(job_id), "status", "running")


def test_held_jobs_are_judged_stranded_only_once_redis_has_been_up_for_the_grace(restarted):
    leader = Leader(app, load(orphan_grace_s=GRACE_S), restarted, owner="test-leader")
    hold(restarted, "taken-before-the-restart", delivered_ago_s=60)

    leader._recover_stranded([])
    assert restarted.hexists("unacked", "taken-before-the-restart")  # its worker may not have counted it yet

    wait_for(lambda: restarted.info("server")["uptime_in_seconds"] >= GRACE_S, 10, what="the grace")
    leader.stranded_checked_at = 0.0
    leader._recover_stranded([])
    assert not restarted.hexists("unacked", "taken-before-the-restart")
    assert restarted.llen(QUEUE) == 1 and restarted.hget(keys.job("taken-before-the-restart"), "status") == b"queued"
