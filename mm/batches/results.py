"""A finished batch's output and error files, in OpenAI's line shapes and in input order.

A request that ran has a line ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}``: in the output file when it succeeded, in the error file (with the
runtime's or mm's status and an OpenAI error body) when it failed. A request that never ran
(cancelled or expired batch) has ``"response": null`` and an ``error`` with ``batch_cancelled``
or ``batch_expired``, in the error file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import redis

from mm import keys, replies
from mm.app import app
from mm.batches import records
from mm.batches.files import FileStore
from mm.batches.lines import Peeked
from mm.gateway.openai_shape import response_body

if TYPE_CHECKING:
    from celery.backends.redis import RedisBackend

READ_CHUNK = 500


def _outcomes(r: redis.Redis, job_ids: list[str]) -> Iterator[tuple[dict[str, Any] | None, dict[str, str]]]:
    """(Celery's stored outcome, the job's record) of each job, read CHUNK at a time."""
    for start in range(0, len(job_ids), READ_CHUNK):
        chunk = job_ids[start:start + READ_CHUNK]
        backend = cast("RedisBackend", app.backend)  # mm's result backend
        metas = r.mget([backend.get_key_for_task(j) for j in chunk])
        pipe = r.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(keys.job(job_id), "status", "error", "error_status", "completed_at")
        for meta, fields in zip(metas, pipe.execute(), strict=True):
            names = ("status", "error", "error_status", "completed_at")
            record = {n: replies.text(v) for n, v in zip(names, fields, strict=True) if v is not None}
            yield (json.loads(meta) if meta else None), record


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def result_line(record: dict[str, str], job_id: str, request: Peeked, meta: dict[str, Any] | None,
                job: dict[str, str]) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the request's line) for one request of the batch."""
    line: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": request.custom_id, "response": None,
                            "error": None}
    state = (meta or {}).get("status")
    if state == "SUCCESS":
        created = int(float(job.get("completed_at") or time.time()))
        body = response_body(record["endpoint"], request.model, meta["result"], job_id, created,  # type: ignore[index]
                             encoding=request.encoding)
        line["response"] = {"status_code": 200, "request_id": job_id, "body": body}
        return True, line
    if state == "FAILURE":
        status = int(job.get("error_status") or 500)
        message = job.get("error") or "the job failed"
        line["response"] = {"status_code": status, "request_id": job_id, "body": _error_body(status, message)}
        return False, line
    why = record.get("stop_reason") or "cancelled"
    line["error"] = {"code": f"batch_{why}",
                     "message": f"the batch was {why} before this request ran" if why == "cancelled" else
                     "this request could not be run before the batch's completion window expired"}
    return False, line


def write_results(r: redis.Redis, files: FileStore, record: dict[str, str],
                  requests: list[Peeked]) -> tuple[str | None, str | None]:
    """Write the batch's output and error files; their ids (None for a file with no line)."""
    batch_id = record["id"]
    job_ids = [records.job_id(batch_id, i) for i in range(len(requests))]
    output: list[bytes] = []
    errors: list[bytes] = []
    for (meta, job), job_id, request in zip(_outcomes(r, job_ids), job_ids, requests, strict=True):
        ok, line = result_line(record, job_id, request, meta, job)
        (output if ok else errors).append(json.dumps(line).encode())
    output_id = files.create(b"\n".join(output) + b"\n", f"{batch_id}_output.jsonl", "batch_output")["id"] \
        if output else None
    error_id = files.create(b"\n".join(errors) + b"\n", f"{batch_id}_error.jsonl", "batch_output")["id"] \
        if errors else None
    return output_id, error_id
