"""Commands the leader sends to a node's queue ``mm.node.<node>``: load, unload and pull, each fenced."""

from __future__ import annotations

from typing import Any

from mm.app import LOAD_TASK, PULL_TASK, UNLOAD_TASK, app
from workers import node_agent_current


def _agent():
    agent = node_agent_current.agent
    if agent is None:
        raise RuntimeError("this worker runs no node agent; node commands go to the gpu-broker")
    return agent


@app.task(name=LOAD_TASK, bind=True, acks_late=False)
def load(self, model: str, token: int) -> dict[str, Any]:
    """Load ``model`` on this node (fenced by ``token``)."""
    return _agent().load(model, token, decided_at=self.request.get("mm_decided"))


@app.task(name=UNLOAD_TASK, bind=True, acks_late=False)
def unload(self, model: str, token: int, reason: str = "") -> dict[str, Any]:
    """Unload ``model`` from this node (fenced by ``token``)."""
    return _agent().unload(model, token, reason, decided_at=self.request.get("mm_decided"))


@app.task(name=PULL_TASK, bind=True, acks_late=False)
def pull(self, model: str, token: int) -> dict[str, Any]:
    """Pull ``model`` into this node's runtime, with progress in the task's state."""

    def progress(update: dict[str, Any]) -> None:
        self.update_state(state="PROGRESS", meta=update)

    return _agent().pull(model, token, progress)
