"""A node agent publishes an operation as running before it asks the runtime, so that a leader that
takes over after the agent dies mid-load sees the node busy (the runtime finishes the load alone).

Found by the 60-minute chaos soak: a gpu-broker killed 70 ms into a load left the runtime loading a
model nobody had published; the next leader placed another load on that node and the runtime
refused it for memory."""

from __future__ import annotations

import json

import redis

from mm import keys
from mm.memory import BudgetMonitor
from mm.settings import Settings
from mm.workers.node_agent import NodeAgent
from tests.runtime_server import start_runtime
from tests.support import GB, sim_model

MODEL = sim_model("published:1b", load_bandwidth=10 * GB)


def test_a_load_is_published_as_running_before_the_runtime_is_asked(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[MODEL], memory=2 * GB)
    r = redis.Redis.from_url(redis_url)
    try:
        agent = NodeAgent(Settings(redis_url=redis_url, runtime_url=runtime.url, node="n1"), r,
                          BudgetMonitor(2 * GB))
        seen_at_call = []
        generate = agent.runtime.generate

        def generate_seeing_state(**kwargs):
            seen_at_call.append(json.loads(r.get(keys.node_state("n1")) or "{}"))
            return generate(**kwargs)

        agent.runtime.generate = generate_seeing_state  # the real call, with a look at Redis first

        agent.load(MODEL["name"], token=1)

        (state,) = seen_at_call
        assert state["ops"][MODEL["name"]]["op"] == "load" and state["ops"][MODEL["name"]]["state"] == "running"
        assert state["resident"] == []
        after = json.loads(r.get(keys.node_state("n1")))
        assert after["ops"][MODEL["name"]]["state"] == "done" and after["resident"][0]["model"] == MODEL["name"]
    finally:
        r.delete(keys.node_state("n1"))
        r.close()
        runtime.stop()
