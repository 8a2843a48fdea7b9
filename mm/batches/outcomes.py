"""What a model-worker notes about a batch's job: its batch, and its outcome there (whether its batch was
stopped is one of :func:`mm.cancel.requested`'s questions)."""

from __future__ import annotations

from typing import Any

import redis

from mm import keys


def batch_of(request: dict[str, Any]) -> str | None:
    """The id of the batch the job belongs to; None for a job of its own."""
    metadata = request.get("metadata")
    batch_id = metadata.get("batch_id") if isinstance(metadata, dict) else None
    return batch_id if isinstance(batch_id, str) and batch_id else None


def note(pipe: redis.client.Pipeline, request: dict[str, Any], job_id: str, outcome: str) -> None:
    """Count the job's outcome (completed, failed or cancelled) in its batch, if it has one."""
    batch_id = batch_of(request)
    if batch_id is not None:
        pipe.sadd(keys.batch_ended(batch_id, outcome), job_id)

