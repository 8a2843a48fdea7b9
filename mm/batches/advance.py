"""Moving batches along, from the gateway: validate, enqueue, count, stop, finalize.

Every gateway runs an :class:`Advancer` on its own thread; a lock per batch makes one of them act
on a batch at a time, and everything it knows is in Redis and the file store, so a gateway that
restarts (or another one) carries on where the last one stopped:

- ``validating``: the input file is checked whole; an invalid one fails the batch, naming its lines.
- ``in_progress``: requests are enqueued as jobs ``<batch>-<n>`` in order, ``enqueued`` counting
  them. After a restart the requests past ``enqueued`` that were sent already (a job record, or
  a message in a queue) are not sent again. When every job has ended the batch is finalized.
- ``cancelling`` (a cancel, or the completion window passed): workers end the batch's jobs that
  have not started; its queued messages are removed; running ones finish.
- ``finalizing``: the output and error files are written; the batch ends ``completed``,
  ``cancelled`` or ``expired``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from mm import cancel, client, keys, lost_jobs, registry, replies
from mm.app import app
from mm.batches import records
from mm.batches.files import FileStore
from mm.batches.lines import ENDPOINTS, Context, Line, Peeked, check, peek
from mm.batches.results import write_results
from mm.settings import Settings

log = logging.getLogger("mm.batches")

CHUNK = 200  # requests enqueued between two looks at the batch's status
LOCK_MS = 30_000
RECONCILE_S = 15.0  # no job of a batch ended for this long: look at its jobs one by one
LOST_RECHECK_S = 1.0


@dataclass
class Advancer:
    """Advances every live batch, one step per :meth:`tick`; :meth:`run` ticks until stopped."""

    settings: Settings
    r: redis.Redis
    files: FileStore
    owner: str
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)  # set: tick now (a batch was created)
    _lines: dict[str, list[Line]] = field(default_factory=dict)  # batch id -> its checked requests
    _progress: dict[str, tuple[int, float]] = field(default_factory=dict)  # batch id -> (ended, since)
    _resumed: set[str] = field(default_factory=set)  # batches whose unsure requests were looked at
    _swept: set[str] = field(default_factory=set)  # stopped batches whose queued messages were removed

    def run(self) -> None:
        """Tick every ``MM_BATCH_TICK_S`` (or when woken) until :attr:`stop` is set; Redis errors wait
        for the next tick."""
        while not self.stop.is_set():
            self.wake.wait(self.settings.batch_tick_s)
            self.wake.clear()
            if self.stop.is_set():
                return
            try:
                self.tick()
            except redis.RedisError as exc:
                log.warning("batches: Redis unavailable: %s", exc)
            except Exception:  # a bug must not stop every batch for the gateway's lifetime
                log.exception("batches: advancing failed")

    def tick(self) -> None:
        """One step for every live batch this gateway can lock."""
        for record in records.live(self.r):
            if self.stop.is_set():
                return
            with self._locked(record["id"]) as mine:
                if mine:
                    fresh = records.get(self.r, record["id"])
                    if fresh:
                        self.advance(fresh)

    class _Lock:
        def __init__(self, advancer: Advancer, batch_id: str):
            self.a, self.key = advancer, keys.batch_lock(batch_id)

        def __enter__(self) -> bool:
            return bool(self.a.r.set(self.key, self.a.owner, nx=True, px=LOCK_MS))

        def __exit__(self, *exc: object) -> None:
            if replies.text(self.a.r.get(self.key) or b"") == self.a.owner:
                self.a.r.delete(self.key)

    def _locked(self, batch_id: str) -> Advancer._Lock:
        return Advancer._Lock(self, batch_id)

    def _keep_lock(self, batch_id: str) -> None:
        self.r.set(keys.batch_lock(batch_id), self.owner, px=LOCK_MS, xx=True)

    def advance(self, record: dict[str, str]) -> None:
        """One step of one batch, by its status."""
        batch_id, status = record["id"], record["status"]
        if status in ("validating", "in_progress") and time.time() > float(record["expires_at"]):
            self.begin_stop(batch_id, "expired")
            return
        if status == "validating":
            self.validate(record)
        elif status == "in_progress":
            if int(record["enqueued"]) < int(record["total"]):
                self.enqueue(record)
            elif self.all_ended(record):
                records.set_status(self.r, batch_id, "finalizing")
                self.finalize(records.get(self.r, batch_id) or record)
        elif status == "cancelling":
            self.remove_queued(record)
            if self.all_ended(record):
                records.set_status(self.r, batch_id, "finalizing")
                self.finalize(records.get(self.r, batch_id) or record)
        elif status == "finalizing":
            self.finalize(record)

    # --- validating ---------------------------------------------------------------------
    def lines(self, record: dict[str, str]) -> tuple[list[Line], list[dict[str, object]]]:
        """The batch's checked requests (kept after the first check), or the errors of its file."""
        batch_id = record["id"]
        if batch_id in self._lines:
            return self._lines[batch_id], []
        data = self.files.content(record["input_file_id"])
        if data is None:
            return [], [{"code": "file_not_found", "message": f"input file {record['input_file_id']} is gone",
                         "param": "input_file_id", "line": None}]
        if record["endpoint"] not in ENDPOINTS:
            return [], [{"code": "invalid_endpoint", "message": f"endpoint must be one of {', '.join(ENDPOINTS)}",
                         "param": "endpoint", "line": None}]
        facts = {}
        for name, entry in registry.all_models(self.r).items():
            facts[name] = entry.facts()
        ctx = Context(record["endpoint"], record["priority"], batch_id, self.settings, frozenset(facts),
                      facts.get)
        lines, errors = check(data, ctx)
        if not errors:
            self._lines[batch_id] = lines
        return lines, [e.as_dict() for e in errors]

    def validate(self, record: dict[str, str]) -> None:
        lines, errors = self.lines(record)
        if errors:
            records.set_status(self.r, record["id"], "failed", errors=json.dumps(errors), total=0)
            log.info("batch %s failed validation: %d errors", record["id"], len(errors))
            return
        records.set_status(self.r, record["id"], "in_progress", total=len(lines))
        log.info("batch %s: %d requests to %s", record["id"], len(lines), record["endpoint"])

    # --- in_progress --------------------------------------------------------------------
    def enqueue(self, record: dict[str, str]) -> None:
        """Send the batch's remaining requests as jobs, CHUNK at a time, until stopped or done."""
        batch_id = record["id"]
        lines, errors = self.lines(record)
        if errors:  # the file changed or vanished since it was checked
            records.set_status(self.r, batch_id, "failed", errors=json.dumps(errors))
            return
        start = int(record["enqueued"])
        if batch_id not in self._resumed:
            self._resumed.add(batch_id)
            start = self._skip_sent(lines, start)
        while start < len(lines) and not self.stop.is_set():
            if replies.text(self.r.hget(keys.batch(batch_id), "status") or b"") != "in_progress":
                return  # cancelled meanwhile
            end = min(start + CHUNK, len(lines))
            for line in lines[start:end]:
                client.enqueue(line.request, records.job_id(batch_id, line.index))
            self.r.hset(keys.batch(batch_id), "enqueued", end)
            self._keep_lock(batch_id)
            start = end

    def _skip_sent(self, lines: list[Line], start: int) -> int:
        """Mark as enqueued the requests from ``start`` on that an earlier run sent (before it
        could count them); return where sending resumes. Only the last CHUNK can be unsure."""
        unsure = lines[start:start + CHUNK]
        if not unsure:
            return start
        batch_id = replies.text(unsure[0].request.metadata["batch_id"])
        ids = [records.job_id(batch_id, line.index) for line in unsure]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job(job_id))
        recorded = pipe.execute()
        queued = self._queued_ids({line.request.model for line in unsure}, batch_id)
        sent = [bool(rec) or job_id in queued for job_id, rec in zip(ids, recorded, strict=True)]
        resume = start + (max(i for i, s in enumerate(sent) if s) + 1 if any(sent) else 0)
        for line, was_sent in zip(unsure[:resume - start], sent, strict=False):
            if not was_sent:  # between two sent ones: never sent
                client.enqueue(line.request, records.job_id(batch_id, line.index))
        self.r.hset(keys.batch(batch_id), "enqueued", resume)
        return resume

    def _queued_ids(self, models: set[str], batch_id: str) -> set[str]:
        """Ids of the batch's jobs whose messages wait in a model queue or in kombu's unacked hash."""
        return {job_id for job_id in cancel.waiting(self.r, models) if job_id.startswith(batch_id + "-")}

    def all_ended(self, record: dict[str, str]) -> bool:
        """Whether every enqueued job of the batch has ended (looking job by job when counts stall)."""
        batch_id = record["id"]
        ended = sum(records.counts(self.r, batch_id).values())
        enqueued = int(record["enqueued"])
        if ended >= enqueued:
            self._progress.pop(batch_id, None)
            return True
        last, since = self._progress.get(batch_id, (-1, time.monotonic()))
        if ended != last:
            self._progress[batch_id] = (ended, time.monotonic())
        elif time.monotonic() - since > RECONCILE_S:
            self._progress[batch_id] = (ended, time.monotonic())
            return self.reconcile(batch_id, enqueued)
        return False

    def reconcile(self, batch_id: str, enqueued: int) -> bool:
        """Count jobs that ended without being counted (their worker died between storing the
        outcome and counting it; the record expired); True if all have ended then."""
        counted: set[str] = set()
        for ended in records.OUTCOMES:
            counted |= {replies.text(m) for m in self.r.smembers(keys.batch_ended(batch_id, ended))}
        missing = [j for j in (records.job_id(batch_id, i) for i in range(enqueued)) if j not in counted]
        pipe = self.r.pipeline(transaction=False)
        waiting = []
        for job_id in missing:
            state = app.AsyncResult(job_id).state
            outcome: str | None = {"SUCCESS": "completed", "FAILURE": "failed", "REVOKED": "cancelled"}.get(state)
            if outcome is None and not self.r.exists(keys.job(job_id)):
                outcome = "failed"  # its record is gone: it can never end now
            if outcome:
                pipe.sadd(keys.batch_ended(batch_id, outcome), job_id)
            elif self.r.hget(keys.job(job_id), "status") == b"queued":
                waiting.append(job_id)
        pipe.execute()
        self._resend_lost(batch_id, waiting)
        return sum(records.counts(self.r, batch_id).values()) >= enqueued

    def _resend_lost(self, batch_id: str, waiting: list[str]) -> None:
        """Send again the jobs that wait as queued but whose messages are in no queue and not held.

        kombu's Redis transport takes a message off its list (BRPOP) and then, in a second command,
        records it as unacked: if Redis dies between the two, the message is gone and its job would
        wait forever; so, if a worker dies between the two. Such a job never started, so sending it
        again runs it once. Only a job submitted before Redis last started or a worker was last
        lost can have been lost so: any other one missing from both looks is in a live worker's
        hands between those two commands, and sending it again would run it twice."""
        record = records.get(self.r, batch_id)
        waiting = lost_jobs.submitted_before(self.r, waiting, lost_jobs.vanished_by(self.r))
        if not waiting or record is None:
            return
        lines, errors = self.lines(record)
        if errors:
            return
        by_id = {records.job_id(batch_id, line.index): line for line in lines}
        models = {by_id[j].request.model for j in waiting if j in by_id}
        queued = self._queued_ids(models, batch_id)
        lost = [j for j in waiting if j in by_id and j not in queued]
        if lost:  # a second look: a message between a worker's BRPOP and its unacked write shows up by then
            time.sleep(LOST_RECHECK_S)
            queued = self._queued_ids(models, batch_id)
            lost = [j for j in lost if j not in queued and self.r.hget(keys.job(j), "status") == b"queued"]
        for job_id in lost:
            client.enqueue(by_id[job_id].request, job_id)
        if lost:
            log.warning("batch %s: %d jobs lost by the broker were sent again: %s", batch_id, len(lost), lost)

    # --- cancelling ---------------------------------------------------------------------
    def begin_stop(self, batch_id: str, why: str) -> None:
        records.stop(self.r, batch_id, why, self.settings.result_expires_s)

    def requests(self, record: dict[str, str]) -> list[Peeked]:
        """Each of the batch's requests (custom_id, model, encoding), read from its input file."""
        data = self.files.content(record["input_file_id"])
        return peek(data) if data is not None and int(record.get("total") or 0) else []

    def remove_queued(self, record: dict[str, str]) -> None:
        """Take the batch's waiting messages off their queues and end their jobs ``cancelled``.

        Once per batch and process: a message that comes back later (its worker died) meets a
        worker that ends it cancelled, as the batch's stop marker says."""
        batch_id = record["id"]
        if batch_id in self._swept:
            return
        self._swept.add(batch_id)
        models = {request.model for request in self.requests(record)[:int(record["enqueued"])]}
        removed = cancel.take_off(self.r, cancel.model_lists(models), lambda job_id: job_id.startswith(batch_id + "-"))
        reason = f"cancelled: batch {batch_id} was {record.get('stop_reason', 'cancelled')} before the job ran"
        for job_id in removed:
            cancel.end_cancelled(self.r, job_id, reason, batch_id)

    # --- finalizing ---------------------------------------------------------------------
    def finalize(self, record: dict[str, str]) -> None:
        """Write the output and error files and end the batch."""
        output_id, error_id = write_results(self.r, self.files, record, self.requests(record))
        final = record.get("stop_reason") or "completed"
        records.set_status(self.r, record["id"], final, output_file_id=output_id or "", error_file_id=error_id or "")
        # The stop marker stays (and expires with the job records): a message redelivered late still ends cancelled.
        self.r.expire(keys.batch_cancelled(record["id"]), self.settings.result_expires_s)
        for cache in (self._lines, self._progress):
            cache.pop(record["id"], None)
        self._resumed.discard(record["id"])
        self._swept.discard(record["id"])
        log.info("batch %s %s", record["id"], final)

