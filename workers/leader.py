"""The leader: active only while it holds the broker lease; turns plan(snapshot) into fenced commands.

Every gpu-broker runs one. A standby keeps trying to take the lease and leads once it lapses.
The lease is renewed by its own thread at a third of its TTL; the deciding thread checks the
lease's monotonic validity before every command, so a renewal failure stops it at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import redis
from celery import Celery
from celery.states import READY_STATES

from mm import deadlines, events, keys, lost_jobs, redelivery, replies
from mm.app import LOAD_TASK, UNLOAD_TASK
from mm.errors import JobFailed
from mm.lease import Lease
from mm.scheduling.policy import plan
from mm.scheduling.reader import ClusterRecords, build_snapshot, read_records
from mm.scheduling.snapshot import Bind, Load, Reject, Snapshot, Unbind, Unload
from mm.settings import Settings
from mm.workers import model_requests

if TYPE_CHECKING:
    from celery.backends.redis import RedisBackend

log = logging.getLogger("mm.leader")

COMMAND_TIMEOUT_S = 300.0  # a load/unload not reported done by then is considered lost
BIND_SETTLE_S = 3.0  # how long a (un)bind is assumed done before the worker's own record shows it
MIN_TICK_GAP_S = 0.05  # at most 20 ticks a second, however fast jobs arrive
MAX_LOAD_FAILURES = 3  # consecutive failed loads of a model before its queued jobs fail
STRANDED_CHECK_S = 1.0  # how often held messages are checked for a live worker
LOST_CHECK_SLACK_S = 5.0  # Redis start times computed from its uptime agree within this
LOST_LOOK_S = 60.0  # how long after a Redis restart (and its grace) a leader still looks for lost jobs
DEADLINE_SWEEP_S = 0.5  # how often queued jobs past their deadline are looked for


class Leader:
    """Lease holder and reconcile loop of one gpu-broker process."""

    def __init__(self, app: Celery, settings: Settings, r: redis.Redis, owner: str) -> None:
        self.app = app
        self.settings = settings
        self.r = r
        self.lease = Lease(r, owner, settings.lease_ttl_ms)
        self.pending: dict[tuple[str, str], float] = {}  # (node, model) -> sent at
        self.binds: dict[str, tuple[str | None, float]] = {}  # worker -> (model, sent at)
        self.load_failures: dict[str, tuple[int, float, str]] = {}  # model -> (failures, retry after, error)
        self.ticks = 0
        self.stranded_checked_at = 0.0
        self.lost_checked_for = 0.0  # the Redis start whose lost jobs were looked for (mm.lost_jobs)
        self.deadlines_swept_at = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def leading(self) -> bool:
        return self.lease.valid()

    def start(self) -> None:
        for target, name in ((self._hold_lease, "mm-lease"), (self._decide_loop, "mm-leader")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.lease.token is not None:
            self.lease.release()

    # --- lease ---------------------------------------------------------------------------
    def _hold_lease(self) -> None:
        interval = self.settings.lease_ttl_ms / 3000
        while not self._stop.is_set():
            try:
                if self.lease.token is None:
                    token = self.lease.acquire()
                    if token is not None:
                        log.info("LEASE acquired by %s with token %d", self.lease.owner, token)
                        events.emit(self.r, "leader", owner=self.lease.owner, token=token)
                        self.pending.clear()
                        self.binds.clear()
                        self.r.lpush(keys.WAKE, 1)
                elif not self.lease.renew():
                    log.warning("LEASE lost by %s: renewal failed; standing down", self.lease.owner)
            except Exception:
                log.exception("lease handling failed")
            self._stop.wait(interval)

    # --- deciding ------------------------------------------------------------------------
    def _decide_loop(self) -> None:
        last_tick = 0.0
        while not self._stop.is_set():
            try:
                self.r.blpop([keys.WAKE], timeout=self.settings.tick_s)
                # Coalesce a burst of submissions into one tick instead of one tick per job.
                self._stop.wait(max(0.0, MIN_TICK_GAP_S - (time.monotonic() - last_tick)))
                self.r.delete(keys.WAKE)
                if self.leading:
                    self.tick()
                    last_tick = time.monotonic()
            except Exception:
                log.exception("leader tick failed")
                self._stop.wait(self.settings.tick_s)

    def _forget_finished(self, nodes: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        for (node, model), sent in list(self.pending.items()):
            op = nodes.get(node, {}).get("ops", {}).get(model)
            finished = op is not None and op.get("state") in ("done", "failed") and op.get("at", 0) >= sent
            if finished and op.get("op") == "load":
                self._note_load(model, op)
            if finished or now - sent > COMMAND_TIMEOUT_S or node not in nodes:
                del self.pending[(node, model)]
        for worker, (_model, sent) in list(self.binds.items()):
            if now - sent > BIND_SETTLE_S:
                del self.binds[worker]

    def _note_load(self, model: str, op: dict[str, Any]) -> None:
        """Back off a model whose loads fail; after MAX_LOAD_FAILURES its queued jobs fail with the error."""
        if op["state"] == "done":
            self.load_failures.pop(model, None)
            return
        count = self.load_failures.get(model, (0, 0.0, ""))[0] + 1
        self.load_failures[model] = (count, time.time() + min(60.0, 2.0 ** count), op.get("error", ""))
        if count >= MAX_LOAD_FAILURES:
            self.reject_queued(model, f"{model} failed to load {count} times: {op.get('error', '')}")
            self.load_failures.pop(model)

    def _without_backed_off(self, snapshot: Snapshot) -> Snapshot:
        now = time.time()
        waiting = {m for m, (_n, until, _e) in self.load_failures.items() if until > now}
        if not waiting:
            return snapshot
        return dataclasses.replace(snapshot, demand={m: d for m, d in snapshot.demand.items() if m not in waiting})

    def _finished(self, job_ids: set[str]) -> set[str]:
        """The jobs among ``job_ids`` whose outcome Celery has stored."""
        ids = sorted(job_ids)
        backend = cast("RedisBackend", self.app.backend)  # mm's result backend
        metas = self.r.mget([backend.get_key_for_task(j) for j in ids])
        return {j for j, meta in zip(ids, metas, strict=True)
                if meta and json.loads(meta).get("status") in READY_STATES}

    def _recover_stranded(self, live_workers: list[str]) -> None:
        """Requeue jobs delivered over ``orphan_grace_s`` ago that no live worker runs.

        kombu restores what a worker held when its broker connection drops, unless Redis is gone at
        that moment (a restart, a failover), and a worker killed between taking a job and starting it
        never counted it in flight: such messages stay in kombu's unacked hash until the visibility
        timeout, an hour, unless mm puts them back. Not within ``orphan_grace_s`` of a Redis restart:
        a worker that took a job just before it counts the job in flight only once Redis is back.
        """
        if time.monotonic() - self.stranded_checked_at < STRANDED_CHECK_S:
            return
        self.stranded_checked_at = time.monotonic()
        up_s = self._redis_up_s()
        if up_s < self.settings.orphan_grace_s:
            return  # a worker cut off by the restart may not have counted the jobs it took yet
        if up_s < self.settings.orphan_grace_s + LOST_LOOK_S:  # only just after a Redis restart
            # Redis counts its uptime in whole seconds: it started up to one second after now - up_s.
            self._fail_lost(time.time() - up_s + 1.0)
        pipe = self.r.pipeline(transaction=False)
        for hostname in live_workers:
            pipe.smembers(keys.worker_inflight(hostname))
        running = {j.decode() for members in pipe.execute() for j in members}
        restored = redelivery.stranded_jobs(self.r, running, time.time() - self.settings.orphan_grace_s,
                                            self._finished)
        if restored:
            log.warning("requeued %d jobs delivered over %.0fs ago that no live worker runs: %s",
                        len(restored), self.settings.orphan_grace_s, restored)
            events.emit(self.r, "jobs_stranded", jobs=len(restored))

    def _fail_lost(self, redis_started_at: float) -> None:
        """Once per Redis start: end failed the jobs whose messages the broker lost in it (mm.lost_jobs).

        Looked for only in the minute after the restart's grace, so a leader elected at any other
        time reads no job records."""
        if abs(redis_started_at - self.lost_checked_for) < LOST_CHECK_SLACK_S:
            return
        self.lost_checked_for = redis_started_at
        lost_jobs.fail_lost(self.r, redis_started_at)

    def _sweep_deadlines(self) -> None:
        """End ``expired`` the queued jobs past their deadline (mm.deadlines), before the snapshot
        counts them as demand; at most every DEADLINE_SWEEP_S."""
        if time.monotonic() - self.deadlines_swept_at < DEADLINE_SWEEP_S:
            return
        self.deadlines_swept_at = time.monotonic()
        deadlines.sweep(self.r)

    def _redis_up_s(self) -> float:
        """Seconds since Redis (re)started (its INFO; endless if this user may not read it)."""
        try:
            return float(self.r.info("server").get("uptime_in_seconds", 0))
        except redis.ResponseError:
            return float("inf")

    def _recover_lost_workers(self, gone: list[str]) -> None:
        """Requeue at once the jobs of workers whose heartbeat expired (SIGKILL, crash, lost host)."""
        for hostname in gone:
            job_ids = {replies.text(j) for j in self.r.smembers(keys.worker_inflight(hostname))}
            restored = redelivery.restore_jobs(self.r, job_ids, self._finished)
            if job_ids:
                log.warning("worker %s lost with %d jobs in flight; requeued %d", hostname, len(job_ids), len(restored))
                events.emit(self.r, "worker_lost", worker=hostname, jobs=len(job_ids), requeued=len(restored))
            self.r.delete(keys.worker_inflight(hostname))
            self.r.srem(keys.WORKERS, hostname)
        if gone:  # a message it took off its queue but had not recorded as held is gone with it
            lost_at = time.time()
            self.r.set(keys.WORKER_LOST_AT, lost_at)
            lost_jobs.fail_lost(self.r, lost_at)

    def tick(self) -> list[Any]:
        """Read a snapshot, plan, and send the actions; return them (none unless leading)."""
        if not self.leading:
            return []
        self.ticks += 1
        records = read_records(self.r)
        self._forget_finished(records.nodes)
        self._recover_lost_workers(records.gone_workers)
        self._recover_stranded(list(records.workers))
        self._sweep_deadlines()
        snapshot, _ = build_snapshot(
            self.r, self.settings, self.pending, {w: m for w, (m, _t) in self.binds.items()}, records=records
        )
        snapshot = self._without_backed_off(snapshot)
        reconciling, returned = self._reconcile_returned(records, snapshot)
        requested, requests = self._requested_unloads(snapshot)
        actions = plan(snapshot) + requested + reconciling
        for action in actions:
            token = self.lease.token
            if token is None or not self.leading:
                log.warning("LEASE no longer valid; dropping %d planned actions", len(actions))
                break
            self.dispatch(action, token)
        else:
            # Returned nodes and unload requests are marked handled only by a leader that sent the
            # unloads: one paused mid-tick (a stale view, its lease gone) leaves them to the next.
            if returned:
                self.lease.remove_if_held("SREM", keys.LOST_NODES, *returned)
            if requests:
                self.lease.remove_if_held("HDEL", keys.UNLOAD_REQUESTS, *requests)
            token = self.lease.token
            if token is not None and self.leading:
                handled = model_requests.dispatch(self, snapshot, token)
                if handled:
                    self.lease.remove_if_held("HDEL", keys.MODEL_OP_REQUESTS, *handled)
        return actions

    def _reconcile_returned(self, records: ClusterRecords, snapshot: Snapshot) -> tuple[list[Unload], list[str]]:
        """Note nodes that went silent; unload what a returning one still holds (mm placed it elsewhere).

        Returns the unloads and the returned nodes, which the caller marks reconciled once it sent them.
        """
        silent = set(records.registered_nodes) - set(records.nodes)
        if silent and self.r.sadd(keys.LOST_NODES, *silent):
            log.warning("NODE lost: %s (state expired); its jobs are requeued as its workers expire", sorted(silent))
            events.emit(self.r, "node_lost", nodes=sorted(silent))
        returned = {replies.text(n) for n in self.r.smembers(keys.LOST_NODES)} & set(records.nodes)
        unloads = []
        for name in sorted(returned):
            node = snapshot.nodes.get(name)
            for model, resident in sorted(node.resident.items()) if node else []:
                info = snapshot.models.get(model)
                if not resident.in_flight and not (info and info.pinned):
                    unloads.append(Unload(name, model, "node returned: reconciled with the current plan"))
            log.info("NODE %s returned; reconciling %d resident models", name, len(unloads))
            events.emit(self.r, "node_returned", node=name, unloads=[u.model for u in unloads])
        return unloads, sorted(returned)

    def _requested_unloads(self, snapshot: Snapshot) -> tuple[list[Unload], list[str]]:
        """Unloads asked for outside the policy (idle shutdown), honoured only when safe now; and
        the requests read, which the caller marks handled once it sent the unloads."""
        requests = self.r.hgetall(keys.UNLOAD_REQUESTS)
        unloads = []
        for key, reason in requests.items():
            node_name, _, model = replies.text(key).partition("|")
            node = snapshot.nodes.get(node_name)
            resident = node.resident.get(model) if node else None
            info = snapshot.models.get(model)
            demand = snapshot.demand.get(model)
            if (node is None or resident is None or resident.in_flight or model in node.pending
                    or (info and info.pinned) or (demand and demand.total)):
                log.info("unload of %s on %s not done: pinned, busy, queued or not resident", model, node_name)
                continue
            unloads.append(Unload(node_name, model, replies.text(reason)))
        return unloads, [replies.text(key) for key in requests]

    def dispatch(self, action: Any, token: int) -> None:
        """Send one action as a fenced command."""
        now = time.time()
        if isinstance(action, Load):
            self.pending[(action.node, action.model)] = now
            self.app.send_task(LOAD_TASK, kwargs={"model": action.model, "token": token},
                               queue=keys.node_queue(action.node), headers={"mm_decided": now})
            log.info("PLAN load %s on %s (token %d)", action.model, action.node, token)
        elif isinstance(action, Unload):
            self.pending[(action.node, action.model)] = now
            self.app.send_task(UNLOAD_TASK, kwargs={"model": action.model, "token": token, "reason": action.reason},
                               queue=keys.node_queue(action.node), headers={"mm_decided": now})
            log.info("PLAN unload %s on %s: %s (token %d)", action.model, action.node, action.reason, token)
        elif isinstance(action, Bind):
            self.binds[action.worker] = (action.model, now)
            self.app.control.broadcast("mm_bind", arguments={"model": action.model, "token": token},
                                       destination=[action.worker], reply=False)
            log.info("PLAN bind %s to %s", action.worker, action.model)
        elif isinstance(action, Unbind):
            self.binds[action.worker] = (None, now)
            self.app.control.broadcast("mm_unbind", arguments={"model": action.model, "token": token},
                                       destination=[action.worker], reply=False)
            log.info("PLAN unbind %s from %s", action.worker, action.model)
        elif isinstance(action, Reject):
            self.reject_queued(action.model, action.reason)

    def reject_queued(self, model: str, reason: str) -> int:
        """Fail every queued job of ``model`` with ``reason``; return how many."""
        failed = 0
        for step in keys.PRIORITY_STEPS:
            name = keys.priority_list(model, step)
            while (message := self.r.rpop(name)) is not None:
                job_id = json.loads(cast(bytes, message))["headers"]["id"]  # RPOP without a count: one message
                # The record first: a client that sees the failure must also read the reason.
                self.r.hset(keys.job(job_id),
                            mapping={"status": "failed", "error": reason, "completed_at": time.time()})
                self.app.backend.mark_as_failure(job_id, JobFailed(reason))
                failed += 1
        if failed:
            log.warning("REJECT %d jobs of %s: %s", failed, model, reason)
            events.emit(self.r, "reject", model=model, jobs=failed, reason=reason)
        return failed

