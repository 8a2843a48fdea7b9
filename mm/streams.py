"""Token streams of running jobs: the worker appends Ollama-shaped chunks, clients and the gateway read them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

from mm import keys, replies

STREAM_TTL_S = 3600
MAX_CHUNKS = 100_000


def publish(r: redis.Redis, job_id: str, chunk: dict[str, Any], entry_id: str = "*") -> None:
    """Append one chunk (what one NDJSON line of Ollama's stream holds).

    With its own ``entry_id`` (rising, ``<delivery>-<n>``), a publish sent again because Redis went
    away before it answered, though it had written the chunk, is refused as a duplicate instead of
    showing the reader that chunk twice.
    """
    pipe = r.pipeline(transaction=False)
    pipe.xadd(keys.job_stream(job_id), {"c": json.dumps(chunk)}, id=entry_id, maxlen=MAX_CHUNKS, approximate=True)
    pipe.expire(keys.job_stream(job_id), STREAM_TTL_S)
    try:
        pipe.execute()
    except redis.ResponseError as exc:
        if entry_id == "*" or "equal or smaller" not in str(exc):
            raise


def publish_all(r: redis.Redis, job_id: str, chunks: list[dict[str, Any]]) -> None:
    """Append a whole answer's chunks in one round trip (an answer from the result cache)."""
    pipe = r.pipeline(transaction=False)
    for chunk in chunks:
        pipe.xadd(keys.job_stream(job_id), {"c": json.dumps(chunk)}, maxlen=MAX_CHUNKS, approximate=True)
    pipe.expire(keys.job_stream(job_id), STREAM_TTL_S)
    pipe.execute()


def publish_error(r: redis.Redis, job_id: str, message: str) -> None:
    """End the stream with an error (Ollama sends ``{"error": ...}`` as the last line)."""
    pipe = r.pipeline(transaction=False)
    pipe.xadd(keys.job_stream(job_id), {"error": message})
    pipe.expire(keys.job_stream(job_id), STREAM_TTL_S)
    pipe.execute()


def read(r: redis.Redis, job_id: str, after: str, block_ms: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Entries after ``after`` (waiting up to ``block_ms``): (id, {"chunk": ...} or {"error": ...})."""
    reply = replies.streams(r.xread({keys.job_stream(job_id): after}, block=block_ms, count=256))
    for _stream, entries in reply:
        for entry_id, fields in entries:
            if b"error" in fields:
                yield entry_id.decode(), {"error": fields[b"error"].decode()}
            else:
                yield entry_id.decode(), {"chunk": json.loads(fields[b"c"])}
