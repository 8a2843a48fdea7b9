"""Pulls and deletes of models, run by the leader on the nodes, with progress streamed back.

The gateway's ``POST /api/pull`` and ``DELETE /api/delete`` and ``mm models pull|delete`` file a
request (:func:`request`) and wake the leader. The leader checks it against its snapshot and sends
the fenced command (``mm.node.pull`` to one node, ``mm.node.delete`` to every node listing the
model); each node agent runs it against its runtime. Everything that happens is appended to the
request's Redis stream, which the requester reads with :func:`follow`:

- ``line``: one progress line as Ollama's ``/api/pull`` streams it (relayed as is);
- ``nodes``: the nodes the command went to (written before it is sent);
- ``done``: one of those nodes finished;
- ``error`` (with ``status``, an HTTP code): the operation failed or was refused.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from mm import keys, replies
from mm.runtime.catalog import normalize_name

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

OPS = ("pull", "delete")
STREAM_TTL_S = 3600
READ_BLOCK_MS = 500


class ModelOpError(Exception):
    """A pull or delete that failed or was refused; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    """One pull or delete waiting for the leader."""

    id: str
    op: str
    model: str
    at: float


def request(r: redis.Redis, op: str, model: str) -> str:
    """File a pull or delete of ``model`` (no tag: ``:latest``) for the leader and wake it; return its id.

    Raises:
        ModelOpError: 404 for a delete of a model no runtime lists, 503 while no leader holds the lease.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    model = normalize_name(model)
    if op == "delete" and not r.hexists(keys.MODELS, model):
        raise ModelOpError(404, f"model '{model}' not found")
    if not r.exists(keys.BROKER_LEASE):
        raise ModelOpError(503, f"cannot {op} {model}: no leader is running (start a gpu-broker, e.g. mm up)")
    op_id = uuid.uuid4().hex
    pipe = r.pipeline()
    pipe.hset(keys.MODEL_OP_REQUESTS, op_id, json.dumps({"op": op, "model": model, "at": time.time()}))
    pipe.lpush(keys.WAKE, 1)
    pipe.execute()
    return op_id


def pending(r: redis.Redis) -> list[Request]:
    """The requests no leader has handled yet, oldest first."""
    found = []
    for op_id, raw in r.hgetall(keys.MODEL_OP_REQUESTS).items():
        try:
            fields = json.loads(raw)
            found.append(Request(replies.text(op_id), fields["op"], fields["model"], float(fields["at"])))
        except (ValueError, KeyError, TypeError):
            found.append(Request(replies.text(op_id), "", "", 0.0))  # malformed: the leader refuses it
    return sorted(found, key=lambda req: req.at)


def withdraw(r: redis.Redis, op_id: str) -> None:
    """Drop a request no leader took (its requester gave up waiting)."""
    r.hdel(keys.MODEL_OP_REQUESTS, op_id)


def _append(r: redis.Redis, op_id: str, fields: dict[FieldT, EncodableT]) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.xadd(keys.model_op_stream(op_id), fields)
    pipe.expire(keys.model_op_stream(op_id), STREAM_TTL_S)
    pipe.execute()


def line(r: redis.Redis, op_id: str, status: dict[str, Any]) -> None:
    """Append one progress line, shaped as Ollama's ``/api/pull`` sends it."""
    _append(r, op_id, {"line": json.dumps(status)})


def sent_to(r: redis.Redis, op_id: str, nodes: list[str]) -> None:
    """Record the nodes a command goes to: the operation is over once each of them is done."""
    _append(r, op_id, {"nodes": json.dumps(nodes)})


def done(r: redis.Redis, op_id: str, node: str) -> None:
    """Record that ``node`` finished its part."""
    _append(r, op_id, {"done": node})


def fail(r: redis.Redis, op_id: str, status: int, message: str) -> None:
    """End the operation with an error (``status`` is the HTTP code the requester answers with)."""
    _append(r, op_id, {"error": message, "status": str(status)})


def follow(r: redis.Redis, op_id: str, idle_timeout_s: float,
           stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """Yield the progress lines of operation ``op_id`` until every node it went to is done.

    Returns early, without an error, once ``stop()`` is true (the requester went away).

    Raises:
        ModelOpError: the operation failed or was refused.
        TimeoutError: nothing was heard of it for ``idle_timeout_s`` (no leader, or a node gone).
    """
    stream = keys.model_op_stream(op_id)
    after: bytes | str = "0-0"  # then the id of the last entry read

    waiting: set[str] | None = None
    finished: set[str] = set()
    heard = time.monotonic()
    while not stop():
        reply = replies.streams(r.xread({stream: after}, block=READ_BLOCK_MS, count=256))
        for _name, entries in reply:

            for entry_id, fields in entries:
                after, heard = entry_id, time.monotonic()
                if b"error" in fields:
                    raise ModelOpError(int(fields.get(b"status", b"502")), fields[b"error"].decode())
                if b"line" in fields:
                    yield json.loads(fields[b"line"])
                elif b"nodes" in fields:
                    waiting = set(json.loads(fields[b"nodes"]))
                elif b"done" in fields:
                    finished.add(fields[b"done"].decode())
        if waiting is not None and waiting <= finished:
            return
        if time.monotonic() - heard > idle_timeout_s:
            raise TimeoutError(f"nothing heard of {op_id} for {idle_timeout_s:.0f}s")
