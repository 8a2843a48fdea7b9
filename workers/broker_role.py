"""The node agent and leader of this gpu-broker process, set by its bootstep."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mm.workers.leader import Leader
    from mm.workers.node_agent import NodeAgent

agent: NodeAgent | None = None
leader: Leader | None = None
