"""What one model-worker process is doing: its bound model and jobs in flight, published to Redis.

The leader reads these records to know which workers exist, what they consume and what runs
where, so it never evicts a model with a job in flight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import redis

from mm import keys, replies
from mm.workers.heartbeat import Heartbeat

if TYPE_CHECKING:
    from celery.worker.consumer import Consumer

log = logging.getLogger("mm.worker")


class WorkerState:
    """Bound model and in-flight counts of this process, published every heartbeat with a TTL."""

    def __init__(self, r: redis.Redis, hostname: str, node: str, slots: int, heartbeat_s: float,
                 ttl_s: float) -> None:
        self.r = r
        self.hostname = hostname
        self.node = node
        self.slots = slots
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = int(ttl_s * 1000)
        self.bound: str | None = None
        self.jobs: dict[str, str] = {}  # job id -> model of the jobs in flight
        self.last_job_at = 0.0
        self.consumer: Consumer | None = None  # the Celery consumer, to (un)bind queues from a task thread
        self.draining = False  # shutting down: finishing its jobs, taking no new binding
        self._lock = threading.Lock()
        self._heartbeat = Heartbeat("mm-worker-state", heartbeat_s, self._beat, log, "worker state publish failed")

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hostname": self.hostname, "node": self.node, "slots": self.slots, "bound": self.bound,
                "running": dict(Counter(self.jobs.values())), "last_job_at": self.last_job_at,
                "draining": self.draining, "at": time.time(),
            }

    def publish(self, pipe: redis.client.Pipeline | None = None) -> None:
        """Write this worker's record and register it (into ``pipe`` if given, which the caller then
        executes)."""
        own = pipe is None
        pipe = self.r.pipeline() if pipe is None else pipe
        self._write_record(pipe)
        pipe.sadd(keys.WORKERS, self.hostname)
        if own:
            pipe.execute()

    def _write_record(self, pipe: redis.client.Pipeline) -> None:
        """Queue this worker's record alone: what a job's start or end changes (the registration
        stays, renewed every heartbeat)."""
        pipe.set(keys.worker_state(self.hostname), json.dumps(self.as_dict()), px=self.ttl_ms)

    def drain(self) -> None:
        """Say that this worker is shutting down: the leader binds it no more; its jobs finish."""
        with self._lock:
            self.draining = True
        self.publish()

    def set_bound(self, model: str | None) -> None:
        with self._lock:
            self.bound = model
        try:
            self.publish()
        except redis.RedisError as exc:  # Redis restarting: the next heartbeat publishes it
            log.warning("worker state publish failed (%s); the heartbeat publishes it", exc)

    def claim(self, model: str, job_id: str) -> bool:
        """Count the job in flight here, unless a delivery of it runs in this process already (False)."""
        with self._lock:
            if job_id in self.jobs:
                return False
            self.jobs[job_id] = model
            return True

    def job_started(self, model: str, job_id: str, pipe: redis.client.Pipeline) -> None:
        """Count the job in flight and queue, into ``pipe``, this record and the job's id in the
        in-flight set (so it can be put back if this process dies); the caller executes ``pipe``."""
        with self._lock:
            self.jobs[job_id] = model
        pipe.sadd(keys.worker_inflight(self.hostname), job_id)
        self._write_record(pipe)

    def job_ended(self, job_id: str, pipe: redis.client.Pipeline) -> bool:
        """Uncount the job (once: later calls do nothing and return False) and queue the writes that
        say so into ``pipe``. Called after its outcome is stored, or once storing it failed, so an id
        in the in-flight set always has a worker on it or a stored outcome (else the leader requeues
        its message)."""
        with self._lock:
            if self.jobs.pop(job_id, None) is None:
                return False
            self.last_job_at = time.time()
        pipe.srem(keys.worker_inflight(self.hostname), job_id)
        self._write_record(pipe)
        return True

    def start(self) -> None:
        """Publish this record and prune the in-flight set every heartbeat in a background thread."""
        self._heartbeat.start()

    def stop(self) -> None:
        """Stop the heartbeat and take this worker's record out of Redis."""
        self._heartbeat.stop()
        pipe = self.r.pipeline()
        pipe.delete(keys.worker_state(self.hostname))
        pipe.srem(keys.WORKERS, self.hostname)
        pipe.execute()

    def prune_inflight(self) -> None:
        """Take out of the in-flight set the ids this process no longer runs: ones whose closing write
        failed (Redis was away), or a previous process's under this name. The leader then requeues
        those without an outcome. An id is in this process's jobs before it enters the set, so one
        read from the set and then missing from the jobs has ended."""
        members = {replies.text(m) for m in self.r.smembers(keys.worker_inflight(self.hostname))}
        with self._lock:
            stale = members - set(self.jobs)
        if stale:
            self.r.srem(keys.worker_inflight(self.hostname), *stale)
            log.warning("%d jobs in %s's in-flight set are not running here; the leader requeues them unless done",
                        len(stale), self.hostname)

    def _beat(self) -> None:
        self.publish()
        self.prune_inflight()


# The one instance of this process, set by the bootstep when the process is a model-worker.
current: WorkerState | None = None
