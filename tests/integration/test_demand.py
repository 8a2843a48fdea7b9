"""The leader's view of demand, read from kombu's priority lists in a real Redis."""

from __future__ import annotations

import json

import redis

from mm import keys
from mm.scheduling.reader import read_demand


def queue(r: redis.Redis, model: str, step: int, *submitted: float) -> None:
    for at in submitted:  # kombu LPUSHes and workers BRPOP: the oldest message is at the right end
        r.lpush(keys.priority_list(model, step), json.dumps({"headers": {"mm_submitted": at}, "body": ""}))


def test_demand_counts_each_class_and_ages_it_by_its_oldest_message(redis_url):
    r = redis.Redis.from_url(redis_url)
    queue(r, "a:1b", 0, 90.0, 95.0)
    queue(r, "a:1b", 6, 50.0)
    queue(r, "a:1b", 9, 40.0, 80.0)  # steps 6 and 9 are both low
    queue(r, "b:1b", 3, 99.0)

    demand = read_demand(r, ["a:1b", "b:1b", "idle:1b"], now=100.0)

    assert sorted(demand) == ["a:1b", "b:1b"]  # a model with nothing queued has no demand
    assert demand["a:1b"].queued == {"high": 2, "low": 3}
    assert demand["a:1b"].oldest_wait_s == {"high": 10.0, "low": 60.0}
    assert demand["b:1b"].queued == {"normal": 1} and demand["b:1b"].oldest_wait_s == {"normal": 1.0}
    assert read_demand(r, [], now=100.0) == {}
