"""What the chaos soak checks once the load stopped and the system drained.

* every accepted job ended (complete, failed with a reason, or cancelled); the rest are *lost* (no
  trace of it left in Redis) or *stuck* (still queued, held or running);
* no runtime call of a job began after the job had completed (the runtime's own log: one line per
  answered call, named by the digest of its body), and no client saw another result than the one
  stored;
* fencing: each node ran its load and unload commands with never-decreasing tokens, and no two
  leaders' terms overlapped (the gpu-brokers' PLAN lines);
* memory: no load failed for memory (the scheduler placed it where it believed it fit).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.chaos_load import Entry, answer_text

# "2026-12-01 21:00:00,123 INFO [runtime] ...: POST /api/chat 200 12.3ms model=m request=<digest> ..."
SERVED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*POST /api/(?:generate|chat) 200 ([\d.]+)ms "
                    r"model=\S+ request=([0-9a-f]{12})(?![^\n]*(?:client=gone|done_reason=load|done_reason=unload))",
                    re.M)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
ACQUIRED = re.compile(r"LEASE acquired by (\S+) with token (\d+)")
PLAN_TOKEN = re.compile(r" PLAN .*?\(token (\d+)\)")


def log_time(line: str) -> float | None:
    m = LOG_TIME.match(line)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


# --- watching during the run ------------------------------------------------------------------
@dataclass
class Watch:
    """Reads mm's event stream and the nodes' operations (with their tokens) while the soak runs."""

    redis_url: str
    nodes: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    ops: set[tuple[str, float, int, str, str]] = field(default_factory=set)  # (node, start, token, op, model)
    _last_id: str = "0-0"
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        r = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        while not self._stop.wait(0.25):
            try:
                self.poll(r)
            except redis.RedisError:
                pass  # Redis restarting

    def stop(self) -> None:
        self._stop.set()

    def poll(self, r: redis.Redis) -> None:
        for _id, data in r.xrange("mm:events", min=f"({self._last_id}", count=2000):
            self._last_id = _id.decode()
            self.events.append(json.loads(data[b"event"]))
        for node in self.nodes:
            raw = r.get(f"mm:node:{node}")
            for model, op in (json.loads(raw).get("ops", {}) if raw else {}).items():
                if op.get("token") is None:
                    continue
                start = op["at"] - op["seconds"] if op.get("state") == "done" else op["at"]
                if op.get("state") in ("running", "done"):
                    self.ops.add((node, round(start, 1), int(op["token"]), op["op"], model))


# --- the jobs -----------------------------------------------------------------------------------
def _meta(r: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = r.get(f"celery-task-meta-{job_id}")
    return json.loads(raw) if raw else {}


def _record(r: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(f"mm:job:{job_id}").items()}


def settle(r: redis.Redis, entries: Iterable[Entry]) -> None:
    """Give each entry whose client saw no end the outcome stored in Redis, if there is one."""
    for entry in entries:
        if entry.outcome or not entry.job_id:
            continue
        meta = _meta(r, entry.job_id)
        status = meta.get("status")
        if status == "SUCCESS":
            entry.outcome = "complete"
        elif status in ("FAILURE", "REVOKED"):
            entry.outcome = "failed" if status == "FAILURE" else "cancelled"
            entry.reason = _record(r, entry.job_id).get("error") or str(meta.get("result"))


def where(r: redis.Redis, entry: Entry) -> str:
    """Where a job that did not end is: its record's status and whether its message is anywhere."""
    from mm import keys

    job_id = entry.job_id.encode()
    places = []
    for step in keys.PRIORITY_STEPS:
        if any(job_id in m for m in r.lrange(keys.priority_list(entry.model, step), 0, -1)):
            places.append("queued")
    for queue in keys.INTAKE_QUEUES:
        if any(job_id in m for m in r.lrange(queue, 0, -1)):
            places.append("intake")
    if any(job_id in v for v in r.hvals("unacked")):
        places.append("held")
    for key in r.scan_iter("mm:inflight:*"):
        if r.sismember(key, entry.job_id):
            places.append(f"in flight on {key.decode()[12:]}")
    record = _record(r, entry.job_id)
    return f"record {record.get('status', 'none')}; message " + (", ".join(places) or "nowhere")


def classify_unended(r: redis.Redis, entries: Iterable[Entry]) -> dict[str, str]:
    """Mark each entry without an outcome *lost* (its message is nowhere: it can never run, whatever its
    record says) or *stuck* (queued, held or in flight, yet not ended); job id -> where it is."""
    found = {}
    for entry in entries:
        if entry.outcome and entry.outcome != "lost":
            continue
        place = where(r, entry)
        if entry.outcome != "lost":
            entry.outcome = "lost" if place.endswith("message nowhere") else "stuck"
        found[entry.job_id] = place
    return found


# --- runs counted in the runtime's log ------------------------------------------------------------
def served(paths: Iterable[Path]) -> dict[str, list[tuple[float, float]]]:
    """Request digest -> (start, end) of each call the runtimes answered in full."""
    out: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        for m in SERVED.finditer(path.read_text(errors="replace")):
            end = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            out.setdefault(m.group(4), []).append((end - float(m.group(3)) / 1000, end))
    return out


def digest(entry: Entry, num_ctx: int) -> str:
    """The digest the runtime logs for this job's call: the body the worker sends (always streamed), as httpx
    encodes it."""
    from httpx._content import encode_json

    from mm.workers.inference import request_body

    request: dict[str, Any] = {"model": entry.model, "kind": entry.kind, "options": entry.options}
    if entry.kind == "chat":
        request["messages"] = [{"role": "user", "content": entry.text}]
    else:
        request["prompt"] = entry.text
    body = b"".join(encode_json(request_body(request, {"num_ctx": num_ctx}, True))[1])
    return hashlib.sha1(body).hexdigest()[:12]


@dataclass
class Runs:
    mapped: int = 0  # completed jobs whose call was found in a runtime's log
    unmapped: list[Entry] = field(default_factory=list)  # the others
    extra: int = 0  # calls beyond one per job (a call interrupted by a fault, then run again)
    after_complete: list[str] = field(default_factory=list)  # jobs called again after they had completed
    other_results: list[str] = field(default_factory=list)  # jobs whose stored result differs from the client's
    details: dict[str, str] = field(default_factory=dict)  # job id -> what differs


def unexplained(unmapped: list[Entry], runtime_kills: list[float], before_s: float = 1.0,
                after_s: float = 10.0) -> list[str]:
    """The completed jobs whose runtime call is not in a runtime's log, except those a runtime killed
    just as it answered explains (it sends its answer before it logs it)."""
    return [e.job_id for e in unmapped
            if not any(k - before_s <= (e.ended_at or e.accepted_at) <= k + after_s for k in runtime_kills)]


def completed_at(r: redis.Redis, entry: Entry) -> float:
    """The earliest sign the job had completed: its client saw it, its record or Celery's result says so."""
    times = [entry.ended_at] if entry.ended_at else []
    record = _record(r, entry.job_id)
    if record.get("completed_at"):
        times.append(float(record["completed_at"]))
    meta = _meta(r, entry.job_id)
    if meta.get("date_done"):
        times.append(datetime.fromisoformat(meta["date_done"]).timestamp())
    return min(times) if times else float("inf")


def count_runs(r: redis.Redis, entries: list[Entry], logs: Iterable[Path]) -> Runs:
    from mm import registry

    calls = served(logs)
    num_ctx = {}
    for entry in entries:
        if entry.model not in num_ctx:
            found = registry.get(r, entry.model)
            num_ctx[entry.model] = found.num_ctx if found else 4096
    runs = Runs()
    for entry in entries:
        times = calls.get(digest(entry, num_ctx[entry.model]), [])
        runs.extra += max(0, len(times) - 1)
        if entry.outcome != "complete":
            continue
        runs.mapped += bool(times)
        if not times:
            runs.unmapped.append(entry)
        done = completed_at(r, entry)
        if any(start > done for start, _end in times):
            runs.after_complete.append(entry.job_id)
        stored = _meta(r, entry.job_id).get("result")
        if entry.seen is not None and isinstance(stored, dict) and answer_text(entry.kind, stored) != entry.seen:
            runs.other_results.append(entry.job_id)
            runs.details[entry.job_id] = (f"{entry.via}: saw {entry.seen[:80]!r}, stored "
                                          f"{answer_text(entry.kind, stored)[:80]!r}, {len(times)} runs")
    return runs


# --- fencing and leaders ------------------------------------------------------------------------
def fence_violations(ops: set[tuple[str, float, int, str, str]]) -> list[str]:
    """Commands a node ran with a token older than one it had run before."""
    bad = []
    for node in sorted({o[0] for o in ops}):
        newest = 0
        for _node, start, token, op, model in sorted(o for o in ops if o[0] == node):
            if token < newest:
                bad.append(f"{node}: {op} {model} at {start:.1f} with token {token} after {newest}")
            newest = max(newest, token)
    return bad


def leader_terms(logs: Iterable[Path]) -> dict[int, list[float]]:
    """Token -> the times its leader sent a command (PLAN lines of every gpu-broker's log): the
    token the line carries, else the one its process last acquired (a PLAN after "standing down",
    the rest of the tick in which its renewal failed, is still that term's: a late command)."""
    terms: dict[int, list[float]] = {}
    for path in logs:
        token = None
        for line in path.read_text(errors="replace").splitlines():
            if (m := ACQUIRED.search(line)) is not None:
                token = int(m.group(2))
            elif " PLAN " in line and (at := log_time(line)) is not None:
                m = PLAN_TOKEN.search(line)
                term = int(m.group(1)) if m else token
                if term is not None:
                    terms.setdefault(term, []).append(at)
    return terms


def lease_starts(logs: Iterable[Path]) -> dict[int, float]:
    """Token -> when its leader acquired the lease (LEASE acquired lines of every gpu-broker's log)."""
    starts: dict[int, float] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if (m := ACQUIRED.search(line)) is not None and (at := log_time(line)) is not None:
                starts[int(m.group(2))] = min(at, starts.get(int(m.group(2)), at))
    return starts


def term_starts(terms: dict[int, list[float]], starts: dict[int, float]) -> dict[int, float]:
    """Token -> when its term began: its lease acquired, or its first command if that came first."""
    return {token: min(min(terms.get(token, [float("inf")])), starts.get(token, float("inf")))
            for token in set(terms) | set(starts)}


def _newer_start(began: dict[int, float], token: int) -> float:
    return min((at for t, at in began.items() if t > token), default=float("inf"))


def overlapping_terms(terms: dict[int, list[float]], starts: dict[int, float] | None = None,
                      ) -> tuple[dict[int, int], int, float]:
    """(token -> commands its leader sent once a newer leader held the lease, seconds in which two
    leaders sent commands, the shortest gap between two terms' commands).

    A leader paused between its lease check and its send (SIGSTOP), or still finishing the tick in
    which its renewal failed, sends those commands late: fencing is what must refuse them
    (:func:`fence_refusals_by_token`). ``starts``: when each token's lease was acquired."""
    began = term_starts(terms, starts or {})
    late: dict[int, int] = {}
    for token, times in terms.items():
        after = sum(1 for t in times if t > _newer_start(began, token))
        if after:
            late[token] = after
    by_second: dict[int, set[int]] = {}
    for token, times in terms.items():
        for t in times:
            by_second.setdefault(int(t), set()).add(token)
    spans = sorted((min(t), max(t)) for t in terms.values())
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    return late, sum(1 for s in by_second.values() if len(s) > 1), min(gaps) if gaps else float("nan")


REFUSED = re.compile(r"FENCE refused .* with token (\d+)")
ACCEPTED = re.compile(r"FENCE accepted .* with token (\d+)")


def fence_refusals_by_token(logs: Iterable[Path]) -> dict[int, int]:
    """Token -> commands carrying it that a node agent or model-worker refused (FENCE refused)."""
    refused: dict[int, int] = {}
    for path in logs:
        for m in REFUSED.finditer(path.read_text(errors="replace")):
            refused[int(m.group(1))] = refused.get(int(m.group(1)), 0) + 1
    return refused


def fence_accepts_by_token(logs: Iterable[Path]) -> dict[int, list[float]]:
    """Token -> when a node agent or model-worker accepted a command carrying it (FENCE accepted)."""
    accepted: dict[int, list[float]] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if (m := ACCEPTED.search(line)) is not None and (at := log_time(line)) is not None:
                accepted.setdefault(int(m.group(1)), []).append(at)
    return accepted


def late_obeyed(terms: dict[int, list[float]], accepted: dict[int, list[float]],
                starts: dict[int, float] | None = None) -> dict[int, int]:
    """Token -> commands carrying it that a node or worker accepted after a newer term began: its first
    command, or its lease if ``starts`` is given.

    A newer leader's token is issued as it takes the lease, and from then on every node refuses an
    older one: an accept after that is fencing broken. The soak measures from the newer leader's
    first command, well after its lease: an accept logged a moment after the check that passed it
    is not mistaken for one. A late command neither refused nor accepted never arrived."""
    began = term_starts(terms, starts or {})
    obeyed = {}
    for token in terms:
        n = sum(1 for at in accepted.get(token, []) if at > _newer_start(began, token))
        if n:
            obeyed[token] = n
    return obeyed


def memory_failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loads the runtime refused for memory: each one a load the scheduler believed would fit."""
    return [e for e in events if e.get("kind") == "load_failed" and "memory" in str(e.get("error", "")).lower()]
