"""Fenced remote-control commands the leader sends to model-workers: bind to and unbind from a model."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery.worker.consumer import Consumer
from celery.worker.control import control_command, ok  # type: ignore[attr-defined]  # celery-types omit ok

from mm import keys, store
from mm.lease import check_fence
from mm.workers import worker_state

log = logging.getLogger("mm.worker")


class _ControlState(Protocol):
    """What Celery passes a control command (an AttributeDict of the worker's pidbox)."""

    consumer: Consumer


def _check(token: int, what: str) -> tuple[worker_state.WorkerState | None, dict[str, str] | None]:
    """This process's worker state, or an error reply: not a model-worker, or a stale token."""
    me = worker_state.current
    if me is None:
        return None, {"error": "not a model-worker"}
    newer = check_fence(store.connect(), me.node, token)
    if newer:
        log.warning("FENCE refused %s on %s with token %s: token %s already seen", what, me.hostname, token, newer)
        return None, {"error": f"stale token {token} < {newer}"}
    log.info("FENCE accepted %s on %s with token %s", what, me.hostname, token)
    return me, None


@control_command(args=[("model", str), ("token", int)], signature="<model> <token>")
def mm_bind(state: _ControlState, model: str, token: int, **_: Any) -> dict[str, str] | None:
    """Start consuming ``mm.model.<model>`` if ``token`` is current for this worker's node."""
    me, refused = _check(token, f"bind to {model}")
    if me is None:  # refused
        return refused
    consumer = state.consumer
    if me.bound and me.bound != model:
        consumer.call_soon(consumer.cancel_task_queue, keys.model_queue(me.bound))
    consumer.call_soon(consumer.add_task_queue, keys.model_queue(model), None, "direct", None)
    me.set_bound(model)
    return ok(f"bound to {model}")


@control_command(args=[("model", str), ("token", int)], signature="<model> <token>")
def mm_unbind(state: _ControlState, model: str, token: int, **_: Any) -> dict[str, str] | None:
    """Stop consuming ``mm.model.<model>``; jobs already running finish, the rest stay queued."""
    _me, refused = _check(token, f"unbind from {model}")
    if refused:
        return refused
    unbind_self(state.consumer, model)
    return ok(f"unbound from {model}")


def unbind_self(consumer: Consumer, model: str) -> None:
    """Stop consuming ``model``'s queue (also used by a worker that finds the model not resident)."""
    consumer.call_soon(consumer.cancel_task_queue, keys.model_queue(model))
    me = worker_state.current
    if me is not None and me.bound == model:
        me.set_bound(None)
