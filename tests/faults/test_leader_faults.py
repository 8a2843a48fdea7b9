"""The leader under faults: paused past its lease, racing a twin, losing its renewal."""

from __future__ import annotations

import signal
import time

import pytest
import redis

import mm
from mm import keys
from mm.app import app
from mm.settings import load
from mm.workers.leader import Leader
from tests.procs import wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

MODELS = [sim_model(n, load_bandwidth=10 * GB, eval_rate=2000) for n in ("fa:1b", "fb:1b")]
OPTS = {"num_predict": 8}


@pytest.fixture
def runtime(tmp_path, redis_url):
    rt = start_runtime(tmp_path, engine="sim", models=MODELS, memory=4 * GB)
    yield rt
    rt.stop()


def owner(stack) -> str | None:
    value = stack.r.get(keys.BROKER_LEASE)
    return value.decode() if value else None


def test_two_brokers_started_at_once_elect_exactly_one_leader(tmp_path, redis_url, runtime, ledger):
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, lease_ttl_ms=1000)
    try:
        stack.start_broker("b1")
        stack.start_broker("b2")
        stack.start_worker("w1")
        stack.wait_ready(["fa:1b"], ["w1"])
        first = wait_for(lambda: owner(stack), 30, what="a leader")

        assert mm.generate("fa:1b", "one leader", options=OPTS, timeout=60)["response"]
        # Several lease periods later the same process still leads and only one token was ever taken.
        wait_for(lambda: "LEASE acquired" in stack.procs["b1"].output() + stack.procs["b2"].output(), 10)
        assert owner(stack) == first
        acquired = [n for n in ("b1", "b2") if "LEASE acquired" in stack.procs[n].output()]
        assert len(acquired) == 1
        ledger("7. two brokers start at once", "exactly one leads (one token taken)", submitted=1, completed=1,
               failed=0)
    finally:
        stack.stop()


def test_a_leader_paused_past_its_lease_is_replaced_and_stands_down_when_resumed(tmp_path, redis_url, runtime,
                                                                                 ledger):
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, lease_ttl_ms=1000)
    try:
        stack.start_broker("b1")
        stack.start_worker("w1")
        stack.wait_ready(["fa:1b", "fb:1b"], ["w1"])
        wait_for(lambda: owner(stack), 30, what="b1 to lead")
        stack.start_broker("b2")
        wait_for(lambda: "ready" in stack.procs["b2"].output(), 30, what="b2 to start")
        old_token = int(stack.r.get(keys.FENCE))

        stack.procs["b1"].signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        new_owner = wait_for(lambda: (o := owner(stack)) and o.startswith("b2@") and o, 30, what="b2 to take over")
        assert int(stack.r.get(keys.FENCE)) > old_token
        assert mm.generate("fb:1b", "under the new leader", options=OPTS, timeout=60)["response"]
        recover_s = time.monotonic() - stopped_at

        stack.procs["b1"].signal(signal.SIGCONT)
        wait_for(lambda: "standing down" in stack.procs["b1"].output(), 30, what="b1 to notice it lost the lease")
        assert owner(stack) == new_owner
        assert mm.generate("fa:1b", "still fine", options=OPTS, timeout=60)["response"]
        assert int(stack.r.get(keys.node_fence_seen(stack.node))) > old_token
        ledger("6. leader SIGSTOPped past its 1 s lease, then SIGCONT", "standby leads with a higher token; the old "
               "leader stands down, its token refused", submitted=2, completed=2, failed=0, recover_s=recover_s)
    finally:
        stack.stop()


def test_a_leader_whose_renewal_fails_stops_deciding_at_once(redis_url, ledger):
    r = redis.Redis.from_url(redis_url)
    leader = Leader(app, load(lease_ttl_ms=60_000), r, owner="test-leader")
    assert leader.lease.acquire() is not None and leader.leading

    r.set(keys.BROKER_LEASE, "someone-else")  # the lease lapsed and another broker took it

    assert leader.lease.renew() is False
    assert not leader.leading
    assert leader.tick() == []
    assert r.llen(keys.node_queue("n1")) == 0
    ledger("8. lease renewal fails", "the leader stops deciding at once (no command sent)", submitted=0,
           completed=0, failed=0)
