"""One job's path through mm, in time order: what each component recorded about it.

Built from the job's record (the queue's submission, the worker's start and end) and mm's event
stream in the job's time window (the node's loads and unloads of its model, the scheduler's
rejections, lost workers and nodes, leader changes), not from log files, so it works the same
whichever hosts the processes ran on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from mm import keys, replies

MARGIN_S = 2.0  # events this long before submission or after the end still belong to the job's story
EVENT_COMPONENTS = {"load": "node", "unload": "node", "load_failed": "node", "unload_failed": "node",
                    "pull": "registry", "delete": "registry", "reject": "scheduler", "leader": "scheduler",
                    "worker_lost": "scheduler", "node_lost": "scheduler", "node_returned": "scheduler",
                    "jobs_stranded": "scheduler", "idle_shutdown": "beat", "alert": "monitor", "pin": "api"}


@dataclass(frozen=True)
class Step:
    """One thing a component recorded about the job."""

    at: float
    component: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "component": self.component, "text": self.text}


def _submitted(record: dict[str, str]) -> Step:
    metadata = json.loads(record.get("metadata") or "{}")
    via = f" through the gateway ({metadata.get('endpoint')})" if metadata.get("via") == "gateway" else ""
    if metadata.get("batch_id"):
        via = f" for batch {metadata['batch_id']} (custom_id {metadata.get('custom_id')})"
    return Step(float(record["submitted_at"]), "queue",
                f"submitted: {record.get('kind', 'generate')} for {record['model']} at "
                f"{record.get('priority', 'normal')} priority{via}")


def _worker_steps(record: dict[str, str], deliveries: int) -> list[Step]:
    steps = []
    if record.get("started_at"):
        started, submitted = float(record["started_at"]), float(record["submitted_at"])
        again = f" (delivery {deliveries})" if deliveries > 1 else ""
        steps.append(Step(started, "worker", f"started on node {record.get('node')} by {record.get('worker')} "
                                             f"after {started - submitted:.3f}s in the queue{again}"))
    if record.get("completed_at"):
        status = record.get("status", "")
        error = record.get("error", "")
        text = status if status == "complete" else error if error.startswith(f"{status}:") else f"{status}: {error}"
        steps.append(Step(float(record["completed_at"]), "worker", text))
    return steps


def relevant(event: dict[str, Any], record: dict[str, str]) -> bool:
    """Whether an event concerns the job: its model, its node or worker, or the whole cluster."""
    if event.get("model") is not None:
        return event["model"] == record["model"]
    if event["kind"] == "worker_lost":
        return event.get("worker") == record.get("worker")
    if event["kind"] == "node_lost":
        return record.get("node") in event.get("nodes", [])
    return event["kind"] in ("leader", "jobs_stranded")


def _event_step(event: dict[str, Any]) -> Step:
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "at"))
    return Step(float(event["at"]), EVENT_COMPONENTS.get(event["kind"], "monitor"), f"{event['kind']} {details}")


def trail(record: dict[str, str], events: list[dict[str, Any]], deliveries: int = 1) -> list[Step]:
    """The job's steps, in time order, from its record and the events of its time window."""
    steps = [_submitted(record), *_worker_steps(record, deliveries)]
    steps += [_event_step(e) for e in events if relevant(e, record)]
    return sorted(steps, key=lambda s: s.at)


def read(r: redis.Redis, job_id: str, now: float) -> list[Step] | None:
    """The trail of ``job_id`` from Redis; None if there is no such job (unknown or expired)."""
    record = {replies.text(k): replies.text(v) for k, v in r.hgetall(keys.job(job_id)).items()}
    if not record.get("submitted_at"):
        return None
    start = float(record["submitted_at"]) - MARGIN_S
    end = float(record.get("completed_at") or now) + MARGIN_S
    raw = replies.entries(r.xrange(keys.EVENTS, f"{int(start * 1000)}", f"{int(end * 1000)}"))
    events = [json.loads(data[b"event"]) for _id, data in raw]
    deliveries = int(record.get(keys.DELIVERIES_FIELD) or 1)
    return trail(record, events, deliveries)
