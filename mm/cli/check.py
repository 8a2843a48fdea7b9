"""``mm check``: exit 0 when healthy, 1 with the reason otherwise; compose healthchecks use it."""

from __future__ import annotations

import json
import time

import click
import redis

from mm import keys, redis_memory, replies, store, worker_setup
from mm.settings import get as get_settings


def problems(node: str | None, worker: str | None, beat_within: float | None) -> list[str]:
    """What is wrong, or an empty list: Redis answers and the named parts have reported recently."""
    r = store.connect()
    try:
        r.ping()
    except redis.RedisError as exc:
        return [f"Redis: {exc}"]
    found = redis_memory.problems(redis_memory.read(r), get_settings())
    if node:
        raw = r.get(keys.node_state(node))
        if raw is None:
            found.append(f"node {node} has not published its state recently (is its gpu-broker running?)")
        elif not json.loads(raw).get("runtime_up", False):
            found.append(f"node {node}: runtime down ({json.loads(raw).get('runtime_error', '')})")
    if worker and not r.exists(keys.worker_state(worker)):
        found.append(f"model-worker {worker} has not reported recently")
    for hostname, refused in worker_setup.recorded(r).items():
        found += [f"{hostname} refused to start: {problem}" for problem in refused]
    if beat_within is not None:
        last = replies.entries(r.xrevrange(keys.BEAT_RUNS, count=1))
        at = json.loads(last[0][1][b"run"])["at"] if last else 0.0
        if time.time() - at > beat_within:
            found.append(f"no beat job ran in the last {beat_within:.0f}s")
    return found


def warnings() -> list[str]:
    """What every live node says is wrong with its setup though it runs (no models, a memory budget too large)."""
    r = store.connect()
    nodes = [replies.text(n) for n in replies.members(r.zrange(keys.NODES, 0, -1))]
    states = r.mget([keys.node_state(n) for n in nodes]) if nodes else []
    return [f"warning: node {node}: {warning}" for node, raw in zip(nodes, states, strict=True) if raw
            for warning in json.loads(raw).get("warnings", [])]


@click.command()
@click.option("--node", help="Require this node's state (its gpu-broker and runtime).")
@click.option("--worker", help="Require this model-worker's heartbeat (its Celery hostname).")
@click.option("--beat-within", type=float, help="Require a beat job to have run within this many seconds.")
def check(node: str | None, worker: str | None, beat_within: float | None) -> None:
    """Exit 0 if Redis answers and the named parts are alive (printing nodes' warnings); else say why, exit 1."""
    found = problems(node, worker, beat_within)
    for problem in found:
        click.echo(problem, err=True)
    if found:
        raise SystemExit(1)
    for warning in warnings():
        click.echo(warning, err=True)
    click.echo("ok")
