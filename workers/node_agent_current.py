"""The node agent and leader of this gpu-broker process, set by its bootstep."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.leader import Leader
    from workers.node_agent import NodeAgent

agent: "NodeAgent | None" = None
leader: "Leader | None" = None
