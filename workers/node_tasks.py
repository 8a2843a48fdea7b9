"""Commands the leader sends to a node's queue ``mm.node.<node>``: load, unload, pull and delete, each fenced."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import ollama
from celery import Task

from mm import model_ops
from mm.app import DELETE_TASK, LOAD_TASK, PULL_TASK, UNLOAD_TASK, app
from mm.workers import broker_role

if TYPE_CHECKING:
    from mm.workers.node_agent import NodeAgent

log = logging.getLogger("mm.node")


def _agent() -> NodeAgent:
    agent = broker_role.agent
    if agent is None:
        raise RuntimeError("this worker runs no node agent; node commands go to the gpu-broker")
    return agent


@app.task(name=LOAD_TASK, bind=True, acks_late=False)
def load(self: Task[Any, Any], model: str, token: int) -> dict[str, Any]:
    """Load ``model`` on this node (fenced by ``token``)."""
    return _agent().load(model, token, decided_at=self.request.get("mm_decided"))


@app.task(name=UNLOAD_TASK, bind=True, acks_late=False)
def unload(self: Task[Any, Any], model: str, token: int, reason: str = "") -> dict[str, Any]:
    """Unload ``model`` from this node (fenced by ``token``)."""
    return _agent().unload(model, token, reason, decided_at=self.request.get("mm_decided"))


def op_status(exc: BaseException) -> int:
    """The HTTP status a failed pull or delete is answered with: the runtime's 4xx, else 502."""
    code = getattr(exc, "status_code", 0)
    return code if isinstance(exc, ollama.ResponseError) and 400 <= code < 500 else 502


@app.task(name=PULL_TASK, bind=True, acks_late=False)
def pull(self: Task[Any, Any], model: str, token: int, op_id: str) -> dict[str, Any]:
    """Start pulling ``model`` into this node's runtime; progress goes to the stream of ``op_id``.

    A pull can take minutes: it runs in its own thread, so that loads and unloads sent to this
    node meanwhile are not held up behind it.
    """
    agent = _agent()

    def run() -> None:
        try:
            agent.pull(model, token, lambda update: model_ops.line(agent.r, op_id, update))
        except Exception as exc:
            log.warning("PULL %s failed: %s", model, exc)
            model_ops.fail(agent.r, op_id, op_status(exc), f"pull {model} on {agent.node}: {_message(exc)}")
            return
        model_ops.done(agent.r, op_id, agent.node)

    threading.Thread(target=run, name=f"mm-pull-{model}", daemon=True).start()
    return {"model": model, "node": agent.node, "started": True}


@app.task(name=DELETE_TASK, bind=True, acks_late=False)
def delete(self: Task[Any, Any], model: str, token: int, op_id: str) -> dict[str, Any]:
    """Delete ``model`` from this node's runtime (fenced by ``token``); the outcome goes to ``op_id``."""
    agent = _agent()
    try:
        result = agent.delete(model, token)
    except Exception as exc:
        model_ops.fail(agent.r, op_id, op_status(exc) if not isinstance(exc, RuntimeError) else 409,
                       f"delete {model} on {agent.node}: {_message(exc)}")
        raise
    model_ops.done(agent.r, op_id, agent.node)
    return result


def _message(exc: BaseException) -> str:
    return str(exc.error) if isinstance(exc, ollama.ResponseError) else str(exc)
