"""The leader's half of pulls and deletes: check each request against the snapshot, send it fenced.

A pull goes to one node: one whose runtime already lists the model, else the one with the most
free memory. A delete goes to every node whose runtime lists the model, and is refused (409) while
the model is resident, being loaded, pinned, or has jobs queued, so no job is stranded by it.
"""

from __future__ import annotations

import logging
from typing import Any

from mm import keys, model_ops, registry
from mm.app import DELETE_TASK, PULL_TASK
from mm.scheduling.snapshot import Snapshot

log = logging.getLogger("mm.leader")


def pull_node(snapshot: Snapshot, listed_on: list[str]) -> str | None:
    """The node to pull onto: one already listing the model, else the one with the most free memory."""
    live = sorted(snapshot.nodes.values(), key=lambda n: (-n.free, n.name))
    return next((n.name for n in live if n.name in listed_on), None) or (live[0].name if live else None)


def delete_refusal(snapshot: Snapshot, model: str, pending: dict[tuple[str, str], Any]) -> str | None:
    """Why ``model`` cannot be deleted now, or None."""
    demand = snapshot.demand.get(model)
    if demand is not None and demand.total:
        return f"{model} has {demand.total} jobs queued; delete it once they are done"
    resident_on = sorted(n.name for n in snapshot.nodes.values() if model in n.resident)
    if resident_on:
        return f"{model} is resident on {', '.join(resident_on)}; stop it first (POST /api/models/{model}/stop)"
    if any(model in n.pending for n in snapshot.nodes.values()) or any(m == model for _n, m in pending):
        return f"{model} is being loaded or unloaded; try again once that is done"
    info = snapshot.models.get(model)
    if info is not None and info.pinned:
        return f"{model} is pinned; unpin it first"
    return None


def dispatch(leader: Any, snapshot: Snapshot, token: int) -> list[str]:
    """Send every pending pull and delete (or refuse it on its stream); return the handled ids."""
    handled = []
    for req in model_ops.pending(leader.r):
        entry = registry.get(leader.r, req.model) if req.model else None
        if req.op == "pull":
            node = pull_node(snapshot, entry.nodes if entry else [])
            if node is None:
                model_ops.fail(leader.r, req.id, 503, "no node with a live runtime to pull onto")
            else:
                send(leader, req, PULL_TASK, [node], token)
        elif req.op == "delete":
            live = [n for n in entry.nodes if n in snapshot.nodes] if entry else []
            refusal = delete_refusal(snapshot, req.model, leader.pending)
            if entry is None:
                model_ops.fail(leader.r, req.id, 404, f"model '{req.model}' not found")
            elif refusal:
                model_ops.fail(leader.r, req.id, 409, refusal)
            elif not live:
                model_ops.fail(leader.r, req.id, 503, f"no node listing {req.model} is up: {', '.join(entry.nodes)}")
            else:
                send(leader, req, DELETE_TASK, live, token)
        else:
            model_ops.fail(leader.r, req.id, 400, f"malformed request {req.id}")
        handled.append(req.id)
    return handled


def send(leader: Any, req: model_ops.Request, task: str, nodes: list[str], token: int) -> None:
    """Send ``task`` for ``req`` to each of ``nodes`` with the fencing token."""
    model_ops.sent_to(leader.r, req.id, nodes)
    for node in nodes:
        leader.app.send_task(task, kwargs={"model": req.model, "token": token, "op_id": req.id},
                             queue=keys.node_queue(node))
        log.info("PLAN %s %s on %s (token %d)", req.op, req.model, node, token)
