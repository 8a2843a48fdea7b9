"""Redis Sentinel failover under a real mm stack: jobs keep flowing, losses are reported, tokens measured.

One primary, one replica and three sentinels (``redis-sentinel``) on loopback, each with its own port,
directory and config file, all stopped by process group. Celery uses kombu's sentinel transport and
Celery's sentinel result backend; mm's state, lease and streams use redis-py's Sentinel through
``store.connect()``. Client work runs in subprocesses: this process's mm is bound to the session Redis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from mm import keys, metrics
from tests.integration.test_acl import ACL_PASSWORDS, acl_config_lines
from tests.procs import Proc, free_port, wait_for
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, require_binary, sim_model

MODELS = [sim_model(name, load_bandwidth=8 * GB, prompt_rate=50_000, eval_rate=2_000, parallel=4)
          for name in ("sent-a:1b", "sent-b:1b")]
MEMORY = 4 * GB
MASTER = "mymaster"
SENTINEL_PASSWORD = "sentinels-own-Pa55"
DOWN_AFTER_MS = 1000


class SentinelCluster:
    """A primary, a replica and three sentinels, each a process in its own group and directory.

    The data nodes have docs/redis-ha.md's ACL users: mm logs in as ``mm``, replicas as ``repl`` (so a test
    can cut replication by disabling it), sentinels as ``sentinel``, the test as ``default`` (admin).
    The sentinels also require a password of their own.
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.nodes: dict[int, Proc] = {}
        self.sentinels: dict[int, Proc] = {}
        self.primary = free_port()
        self.replica = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_binary = require_binary("redis-sentinel")

    @property
    def url(self) -> str:
        """The MM_REDIS_URL of this cluster, in the documented form (db and query on the last sentinel)."""
        first, *rest = self.sentinel_ports
        urls = [f"sentinel://mm:{ACL_PASSWORDS['MM_PASSWORD']}@127.0.0.1:{first}"]
        urls += [f"sentinel://127.0.0.1:{p}" for p in rest]
        return ";".join(urls) + f"/0?master_name={MASTER}&sentinel_password={SENTINEL_PASSWORD}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username="default", password=ACL_PASSWORDS["ADMIN_PASSWORD"], socket_timeout=5)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=5)

    def start_node(self, port: int, replica_of: int | None = None) -> None:
        home = self.tmp / f"redis-{port}"
        home.mkdir()
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {home}", "save \"\"", "appendonly yes",
                 "appendfsync everysec", *acl_config_lines(), "masteruser repl",
                 f"masterauth {ACL_PASSWORDS['REPL_PASSWORD']}"]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf = home / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.nodes[port] = Proc([shutil.which("redis-server"), str(conf)], log=home / "redis.log")
        wait_for(self.node(port).ping, 15, what=f"redis-server on {port} ({home / 'redis.log'})")

    def start_sentinel(self, port: int) -> None:
        home = self.tmp / f"sentinel-{port}"
        home.mkdir()
        (home / "sentinel.conf").write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {home}", f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2",
            f"sentinel auth-user {MASTER} sentinel",
            f"sentinel auth-pass {MASTER} {ACL_PASSWORDS['SENTINEL_USER_PASSWORD']}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 4000",
            f"sentinel parallel-syncs {MASTER} 1",
        ]) + "\n")
        self.sentinels[port] = Proc([self.sentinel_binary, str(home / "sentinel.conf")],
                                    log=home / "sentinel.log")

    def start(self) -> None:
        self.start_node(self.primary)
        self.start_node(self.replica, replica_of=self.primary)
        wait_for(lambda: self.node(self.replica).info("replication")["master_link_status"] == "up", 15,
                 what="the replica to sync")
        for port in self.sentinel_ports:
            self.start_sentinel(port)

        def all_sentinels_ready() -> bool:
            for port in self.sentinel_ports:
                state = self.sentinel(port).sentinel_master(MASTER)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            return True

        wait_for(all_sentinels_ready, 30, interval=0.2, what="three sentinels that know the replica and each other")

    def master_port(self) -> int:
        """The master's port as the sentinels agree on it (a majority)."""
        votes = [int(self.sentinel(p).sentinel_get_master_addr_by_name(MASTER)[1]) for p in self.sentinel_ports]
        return max(set(votes), key=votes.count)

    def kill(self, port: int) -> None:
        self.nodes[port].signal(signal.SIGKILL)
        self.nodes[port].stop()

    def cut_replication(self) -> None:
        """Writes to the primary from now on never reach the replica (it can no longer authenticate)."""
        primary = self.node(self.primary)
        primary.acl_setuser("repl", enabled=False)
        primary.client_kill_filter(user="repl")
        wait_for(lambda: self.node(self.replica).info("replication")["master_link_status"] == "down", 10,
                 what="the replica to lose its link to the primary")

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            proc.stop()


@pytest.fixture
def cluster(tmp_path):
    c = SentinelCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def sentinel_stack(tmp_path: Path, url: str, runtime_url: str) -> Stack:
    """A Stack on a sentinel URL; jobs a worker was holding when the primary died are requeued 3 s on."""
    return Stack(tmp_path, url, runtime_url, memory_budget=MEMORY, lease_ttl_ms=3000, orphan_grace_s=3)


@pytest.fixture
def mm_on_sentinel(tmp_path, cluster):
    runtime = start_runtime(tmp_path, engine="sim", models=MODELS, memory=MEMORY)
    stack = sentinel_stack(tmp_path, cluster.url, runtime.url)
    try:
        stack.start_broker("broker")
        stack.start_worker("w1", slots=4)
        stack.wait_ready([m["name"] for m in MODELS], ["w1"])
        yield stack
    finally:
        stack.stop()
        runtime.stop()


def client(url: str, code: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with MM_REDIS_URL=url (mm in this process uses the session Redis)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"MM_REDIS_URL": url})


def cli(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return client(url, "from mm.cli import main; main()", *args, timeout=timeout)


# Submits one job every 50 ms until a wall-clock deadline, then waits (until a second deadline) for
# every accepted job and prints one JSON object per job: when it was submitted, whether the submission
# was accepted, how it ended. argv: model, submit-until, wait-until (epoch seconds), tokens per job.
SUBMITTER = r"""
import json, sys, time
import mm
from mm.errors import JobLost, JobFailed
model, until, wait_until, tokens = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
jobs = []
print("ready", flush=True, file=sys.stderr)
while time.time() < until:
    at = time.time()
    try:
        job = mm.submit(model, "q%d" % len(jobs), options={"num_predict": tokens})
        jobs.append({"id": job.id, "at": at, "accepted": True})
    except Exception as exc:
        jobs.append({"id": None, "at": at, "accepted": False, "error": type(exc).__name__})
        time.sleep(0.2)
    time.sleep(0.05)
for j in jobs:
    if not j["accepted"]:
        continue
    try:
        mm.Job(j["id"]).get(timeout=max(0.5, wait_until - time.time()))
        j["end"] = "complete"
    except JobLost:
        j["end"] = "lost"
    except JobFailed as exc:
        j["end"] = "failed: %s" % exc
    except TimeoutError:
        j["end"] = "timeout"
print(json.dumps(jobs))
"""

# Waits for the given job ids and prints how each ended.
WAITER = r"""
import json, sys
import mm
from mm.errors import JobLost, JobFailed
ends = {}
for job_id in sys.argv[1:]:
    try:
        mm.Job(job_id).get(timeout=30)
        ends[job_id] = "complete"
    except JobLost:
        ends[job_id] = "lost"
    except JobFailed as exc:
        ends[job_id] = "failed: %s" % exc
    except TimeoutError:
        ends[job_id] = "timeout"
print(json.dumps(ends))
"""

def exited(stack: Stack, skip: tuple[str, ...] = ()) -> list[str]:
    """The Celery processes of ``stack`` that are no longer running (a worker losing its broker
    used to exit in kombu's channel close; ``mm.broker_transport`` keeps it alive)."""
    return [name for name, proc in stack.procs.items() if not proc.alive() and name not in skip]


def tokens_in_logs(stack: Stack) -> list[int]:
    """Every fencing token a gpu-broker logged as acquired, in log order per broker."""
    found = []
    for proc in stack.procs.values():
        found += [int(t) for t in re.findall(r"LEASE acquired by \S+ with token (\d+)", proc.output())]
    return found


def whereabouts(r: redis.Redis, job: dict, killed_wall: float) -> dict:
    """Where a job that did not end is: its record, and whether kombu holds its message (for a failure)."""
    unacked = [tag.decode() for tag, raw in r.hscan_iter("unacked") if job["id"].encode() in raw]
    queued = [q.decode() for q in r.scan_iter("mm.model.*") if r.type(q) == b"list" and
              any(job["id"].encode() in m for m in r.lrange(q, 0, -1))]
    record = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(job["id"])).items()}
    return {"id": job["id"], "submitted_after_kill_s": round(job["at"] - killed_wall, 3),
            "status": record.get("status"), "worker": record.get("worker"), "record": bool(record),
            "result": bool(r.exists(f"celery-task-meta-{job['id']}")), "unacked": unacked, "queued": queued}


def finished_jobs(r: redis.Redis) -> int:
    """Jobs that ended well, by the one "ok" sample a worker writes for each."""
    return sum(1 for s in metrics.raw_samples(r, 0, time.time() + 1) if s["status"] == "ok")


def wait_failover(cluster: SentinelCluster, old: int, killed_at: float) -> float:
    """Seconds from the kill until the sentinels name a new master that answers as a master."""
    wait_for(lambda: cluster.master_port() != old, 30, interval=0.05, what="the sentinels to fail over")
    new = cluster.master_port()
    wait_for(lambda: cluster.node(new).info("replication")["role"] == "master", 15, interval=0.05,
             what="the promoted replica to become master")
    return time.monotonic() - killed_at


def submit_through_a_kill(cluster: SentinelCluster, url: str) -> tuple[list[dict], float, float, float]:
    """Submit jobs for 7 s from a child process and kill the primary once ten went through it.

    Returns what became of each submission, the wall time of the kill, the failover's seconds and
    the wall time the promoted replica answered as master.
    """
    done_before = finished_jobs(cluster.node(cluster.primary))
    # Jobs of 0.15 s (300 tokens at 2,000/s), so that some are running when the primary dies.
    until = time.time() + 7
    args = [MODELS[0]["name"], str(until), str(until + 20), "300"]  # held jobs are requeued after the grace
    submitter = subprocess.Popen([sys.executable, "-c", SUBMITTER, *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=os.environ | {"MM_REDIS_URL": url})
    assert submitter.stderr.readline().strip() == "ready"
    wait_for(lambda: finished_jobs(cluster.node(cluster.primary)) >= done_before + 10, 30,
             what="ten jobs to flow through the primary")
    killed_at, killed_wall = time.monotonic(), time.time()
    cluster.kill(cluster.primary)
    failover_s = wait_failover(cluster, cluster.primary, killed_at)
    promoted_wall = time.time()
    out, err = submitter.communicate(timeout=120)
    assert submitter.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), killed_wall, failover_s, promoted_wall


def test_jobs_keep_flowing_through_a_sentinel_failover(cluster, mm_on_sentinel):
    stack, url = mm_on_sentinel, cluster.url
    warm = cli(url, "enqueue", MODELS[0]["name"], "before the failover", "--wait", "--num-predict", "4")
    assert warm.returncode == 0, warm.stderr
    fence_before = int(cluster.node(cluster.primary).get(keys.FENCE))

    jobs, killed_wall, failover_s, promoted_wall = submit_through_a_kill(cluster, url)
    gone = exited(stack)

    accepted = [j for j in jobs if j["accepted"]]
    ends: dict[str, int] = {}
    for j in accepted:
        ends[j["end"]] = ends.get(j["end"], 0) + 1
    refused = [j["at"] - killed_wall for j in jobs if not j["accepted"]]
    after = [j for j in accepted if j["at"] > promoted_wall + 1.0]
    new_master = cluster.node(cluster.master_port())
    hanging = [whereabouts(new_master, j, killed_wall) for j in accepted if j["end"] == "timeout"]
    print(f"\nSENTINEL FAILOVER: promoted {failover_s:.2f}s after the SIGKILL (down-after {DOWN_AFTER_MS} ms); "
          f"{len(jobs)} submissions, {len(refused)} refused with an error"
          + (f" (from {min(refused):+.2f}s to {max(refused):+.2f}s after the kill)" if refused else "")
          + f"; accepted jobs ended {ends}; processes that exited: {gone}; not ended: {hanging}")

    assert set(ends) <= {"complete", "lost", "timeout"}, (ends, [j for j in accepted if j["end"].startswith("fail")])
    # Jobs submitted once the replica is promoted complete.
    assert len(after) >= 5 and all(j["end"] == "complete" for j in after), after
    assert failover_s < 15
    # A job for a model not loaded yet needs a fenced load and a fenced bind after the failover.
    fresh = cli(url, "enqueue", MODELS[1]["name"], "after the failover", "--wait", "--num-predict", "4")
    assert fresh.returncode == 0, fresh.stderr + stack.logs()
    fence_after = int(new_master.get(keys.FENCE))
    print(f"SENTINEL FAILOVER: fence token before {fence_before}, after {fence_after}; tokens acquired per "
          f"broker log {tokens_in_logs(stack)}")
    # Nothing written before the kill was lost here, so the fence never went back.
    assert fence_after >= fence_before
    assert int(new_master.get(keys.node_fence_seen(stack.node)) or 0) <= fence_after
    stranded = sum(int(n) for proc in stack.procs.values()
                   for n in re.findall(r"requeued (\d+) jobs delivered", proc.output()))
    print(f"SENTINEL FAILOVER: {stranded} jobs that workers held at the kill were requeued by the leader")
    assert not gone, f"{gone} exited: {stack.logs()}"  # every worker reconnected to the new master
    # A worker's ack (or kombu's restore) of the jobs it held when the primary died could not be written;
    # the leader requeues them once orphan_grace_s passes instead of kombu after the visibility timeout.
    # So a job that did not end has no message left anywhere: its delivery was taken off the queue on
    # the old primary and the write that holds it (kombu's unacked hash) never reached the replica.
    assert not [h for h in hanging if h["unacked"] or h["queued"]], hanging
    vanished = [h for h in hanging if h["submitted_after_kill_s"] < failover_s]
    print(f"SENTINEL FAILOVER: {len(vanished)} jobs whose delivery was lost with the old primary: {vanished}")
    assert vanished == hanging, hanging


def test_writes_the_replica_never_got_are_lost_and_their_jobs_raise_job_lost(cluster, mm_on_sentinel):
    stack, url = mm_on_sentinel, cluster.url
    stack.start_broker("standby")
    wait_for(lambda: "gpu-broker for node" in stack.procs["standby"].output(), 30, what="the standby broker")
    warm = cli(url, "enqueue", MODELS[0]["name"], "replicated", "--wait", "--num-predict", "4")
    assert warm.returncode == 0, warm.stderr
    primary = cluster.node(cluster.primary)
    wait_for(lambda: cluster.node(cluster.replica).get(keys.FENCE) == primary.get(keys.FENCE), 10,
             what="the replica to have the fence")
    replicated_fence = int(primary.get(keys.FENCE))
    leader = "broker" if primary.get(keys.BROKER_LEASE).decode().startswith(stack.hostname("broker")) else "standby"
    other = "standby" if leader == "broker" else "broker"

    # Given writes that only the primary has: a new leader, its token, its load, five jobs.
    cluster.cut_replication()
    stack.procs[leader].signal(signal.SIGKILL)
    wait_for(lambda: (o := primary.get(keys.BROKER_LEASE)) and o.decode().startswith(stack.hostname(other)), 15,
             what="the standby to take the lease on the primary")
    spam = cli(url, "enqueue", MODELS[1]["name"], "--spam", "5", "--num-predict", "2")
    assert spam.returncode == 0, spam.stderr
    lost_ids = spam.stdout.split()
    assert len(lost_ids) == 5
    wait_for(lambda: all(primary.exists(f"celery-task-meta-{j}") for j in lost_ids), 20,
             what="the five jobs to run on the primary and store their results")
    fence_seen_before = max(int(primary.get(keys.FENCE)), int(primary.get(keys.node_fence_seen(stack.node)) or 0))
    assert fence_seen_before > replicated_fence  # the new leader's token exists only on the primary

    # When the primary dies before the replica got them.
    killed_at = time.monotonic()
    cluster.kill(cluster.primary)
    failover_s = wait_failover(cluster, cluster.primary, killed_at)

    # Then the jobs are reported lost (they ran, but their records and results are gone) ...
    ends = json.loads(client(url, WAITER, *lost_ids).stdout.strip().splitlines()[-1])
    # ... and new jobs, including one that needs a fenced load, run.
    fresh = cli(url, "enqueue", MODELS[0]["name"], "after", "--wait", "--num-predict", "2")
    new_master = cluster.node(cluster.master_port())
    wait_for(lambda: new_master.get(keys.BROKER_LEASE), 15, what="a leader on the new master")
    fence_after = int(new_master.get(keys.FENCE))
    print(f"\nSENTINEL LOST WRITES: promoted {failover_s:.2f}s after the SIGKILL; jobs accepted by the old "
          f"primary only: {list(ends.values()).count('lost')} of 5 raised JobLost; fence token replicated "
          f"{replicated_fence}, highest used before the kill {fence_seen_before}, after the failover {fence_after}; "
          f"tokens acquired per broker log {tokens_in_logs(stack)}")
    assert set(ends.values()) == {"lost"}, ends
    assert not any(new_master.exists(keys.job(j)) for j in lost_ids)
    assert fresh.returncode == 0, fresh.stderr + stack.logs()
    # The INCR of the token used before the kill was lost, yet the next token is higher (clock floor).
    assert fence_after > fence_seen_before
    tokens = tokens_in_logs(stack)
    assert len(tokens) == len(set(tokens)), f"a fencing token was handed out twice: {tokens}"
    gone = exited(stack, skip=(leader,))  # the old leader was killed on purpose
    assert not gone, f"{gone} exited: {stack.logs()}"
    logs = [proc.output() for proc in stack.procs.values()]
    assert not [pw for pw in (ACL_PASSWORDS["MM_PASSWORD"], SENTINEL_PASSWORD) if any(pw in log for log in logs)]
