"""The leader lease and fencing tokens, against a real redis-server."""

import time

import redis

from mm import keys
from mm.lease import Lease, check_fence


def test_only_one_of_two_candidates_gets_the_lease(redis_url):
    r = redis.Redis.from_url(redis_url)
    a, b = Lease(r, "a", 1000), Lease(r, "b", 1000)

    assert a.acquire() > 0
    assert b.acquire() is None
    assert a.valid() and not b.valid()


def test_a_standby_takes_over_with_a_higher_token_when_the_lease_lapses(redis_url):
    r = redis.Redis.from_url(redis_url)
    a, b = Lease(r, "a", 200), Lease(r, "b", 200)
    first = a.acquire()

    deadline = time.monotonic() + 5
    second = None
    while second is None and time.monotonic() < deadline:
        second = b.acquire()
        time.sleep(0.02)

    assert second is not None and second > first
    assert not a.renew() and not a.valid()  # the old holder learns it lost the lease


def test_validity_ends_with_the_ttl_even_without_a_failed_renewal(redis_url):
    r = redis.Redis.from_url(redis_url)
    lease = Lease(r, "a", 100)
    lease.acquire()

    deadline = time.monotonic() + 2
    while lease.valid() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert not lease.valid()


def test_a_node_refuses_a_token_older_than_the_newest_it_has_seen(redis_url):
    r = redis.Redis.from_url(redis_url)

    assert check_fence(r, "n1", 5) == 0
    assert check_fence(r, "n1", 5) == 0  # the same leader again
    assert check_fence(r, "n1", 7) == 0
    assert check_fence(r, "n1", 6) == 7
    assert check_fence(r, "n2", 1) == 0  # nodes are fenced independently
    assert int(r.get(keys.node_fence_seen("n1"))) == 7


def test_a_node_refuses_a_former_leaders_queued_command_before_it_hears_from_the_new_one(redis_url):
    r = redis.Redis.from_url(redis_url)
    old = Lease(r, "old", 1000).acquire()
    assert old is not None and check_fence(r, "n1", old) == 0
    r.delete(keys.BROKER_LEASE)  # the old leader's lease lapsed
    new = Lease(r, "new", 1000).acquire()
    assert new is not None and new > old

    assert check_fence(r, "n1", old) == new  # left in n1's queue; n1 has not seen the new token
    assert check_fence(r, "n1", new) == 0


def test_tokens_keep_rising_even_when_the_counter_was_lost(redis_url):
    r = redis.Redis.from_url(redis_url)
    first = Lease(r, "a", 1000).acquire()
    r.delete(keys.BROKER_LEASE)
    r.set(keys.FENCE, 1)  # a failover lost the counter's last INCRs
    seconds, micros = r.time()
    while seconds * 1000 + micros // 1000 <= first:  # the next millisecond on Redis's clock
        seconds, micros = r.time()

    second = Lease(r, "b", 1000).acquire()

    assert second > first


def test_bookkeeping_writes_go_through_only_while_the_lease_is_held(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.delete("test:lost", "test:requests", keys.BROKER_LEASE)
    r.sadd("test:lost", "n1", "n2")
    r.hset("test:requests", mapping={"n1|a": "idle", "n1|b": "idle"})
    old, new = Lease(r, "old", 100), Lease(r, "new", 5000)
    old.acquire()

    assert old.remove_if_held("SREM", "test:lost", "n1")
    deadline = time.monotonic() + 5
    while new.acquire() is None and time.monotonic() < deadline:  # the old holder pauses past its TTL
        time.sleep(0.02)
    assert new.valid()

    assert not old.remove_if_held("SREM", "test:lost", "n2")
    assert not old.remove_if_held("HDEL", "test:requests", "n1|a")
    assert r.smembers("test:lost") == {b"n2"} and r.hlen("test:requests") == 2
    assert new.remove_if_held("HDEL", "test:requests", "n1|a", "n1|b") and not r.exists("test:requests")
