"""What a node's runtime answers say about how the node is set up, each with its fix.

The node agent publishes these with its state; ``mm check`` and the status page show them.
Three setups are told apart from a runtime that is merely down or restarting:

- the runtime URL answers HTTP but is not an Ollama API (a 404 or a body that is not its JSON);
- the runtime lists no models, so nothing can run on this node;
- ``MM_MEMORY_BUDGET`` is larger than the runtime can load: a load the budget said fits ran out of
  memory. The runtime's own figures (``"requires more system memory (X) than is available (Y)"``)
  tell how much it holds; the node then plans with that instead of retrying the same load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mm.runtime.errors import human_bytes

_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_SIZE = r"\((\d+(?:\.\d+)?)\s*([kmgt]?i?b)\)"
_REQUIRED = re.compile(r"requires more (?:system )?memory " + _SIZE, re.IGNORECASE)
_AVAILABLE = re.compile(r"than is available " + _SIZE, re.IGNORECASE)
NOT_OLLAMA_STATUSES = (404, 405)  # Ollama serves /api/ps and /api/tags to every GET
BUDGET_SLACK = 0.95  # Ollama's figures are rounded to 0.1 of their unit: a budget within 5% is right


def _bytes(pattern: re.Pattern[str], message: str) -> int | None:
    match = pattern.search(message)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()]) if match else None


def required_bytes(message: str) -> int | None:
    """The size an Ollama out-of-memory error says the model needs (``"... memory (7.5 GiB) than ..."``)."""
    return _bytes(_REQUIRED, message)


def available_bytes(message: str) -> int | None:
    """The free memory an Ollama out-of-memory error reports (``"... than is available (3.2 GiB)"``)."""
    return _bytes(_AVAILABLE, message)


def not_ollama(url: str, exc: Exception) -> str | None:
    """Why the runtime at ``url`` is not an Ollama API, judging by how a GET of its API failed; None
    when the failure says nothing of the kind (down, restarting, timing out)."""
    status = getattr(exc, "status_code", None)
    if status in NOT_OLLAMA_STATUSES or isinstance(exc, ValueError):  # ValueError: a body that is not its JSON
        return (f"MM_RUNTIME_URL {url} answers HTTP but is not an Ollama API (GET /api/ps: "
                f"{status or type(exc).__name__}); point it at `ollama serve` or `mm runtime`")
    return None


def no_models(url: str) -> str:
    return (f"the runtime at {url} lists no models, so no job can run on this node: pull one "
            f"(`mm models pull NAME`) or point MM_RUNTIME_URL at a runtime that has them")


@dataclass(frozen=True)
class RuntimeHolds:
    """What an out-of-memory load shows the runtime holds: ``resident`` bytes loaded plus ``available``."""

    resident: int
    available: int

    @property
    def capacity(self) -> int:
        return self.resident + self.available

    def below(self, budget: int) -> bool:
        """Whether the runtime holds clearly less than ``budget`` (beyond its figures' rounding)."""
        return self.capacity < budget * BUDGET_SLACK

    def budget_too_large(self, budget: int, model: str) -> str:
        return (f"MM_MEMORY_BUDGET ({human_bytes(budget)}) is more than the runtime can load: loading {model} "
                f"ran out of memory with {human_bytes(self.available)} free beside {human_bytes(self.resident)} "
                f"resident, so it holds about {human_bytes(self.capacity)}; this node now plans with that. "
                f"Set MM_MEMORY_BUDGET to {self.capacity} or less")
