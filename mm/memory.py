"""Where a node's model memory figures come from: NVML on a GPU host, else a configured budget.

Both monitors answer the same question with the same shape, so the node agent and the tests
treat them alike.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 8 * 1024**3


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class MemoryState:
    source: str  # "nvml" or "budget"
    total: int
    used: int
    free: int
    gpus: list[GpuMemory] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class MemoryMonitor(Protocol):
    def read(self, resident_bytes: int) -> MemoryState:
        """Memory now, given the bytes the runtime reports as resident."""


class BudgetMonitor:
    """A fixed budget minus what the runtime reports as resident (hosts without NVML)."""

    def __init__(self, budget: int):
        self.budget = budget or DEFAULT_BUDGET

    def read(self, resident_bytes: int) -> MemoryState:
        used = min(resident_bytes, self.budget)
        return MemoryState("budget", self.budget, used, self.budget - used)

    def lower_to(self, budget: int) -> None:
        """Plan with ``budget`` from now on: the runtime was found to hold less than configured."""
        self.budget = min(self.budget, budget)


class NvmlMonitor:
    """Per-GPU memory from NVML (pynvml); figures are the whole device's, whoever holds it."""

    def __init__(self, gpus: list[int] | None = None) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self.indices = list(range(count)) if gpus is None else gpus
        if not self.indices or any(i >= count for i in self.indices):
            raise RuntimeError(f"NVML reports {count} GPUs; asked for {self.indices}")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices]

    def read(self, resident_bytes: int) -> MemoryState:
        gpus = []
        for index, handle in zip(self.indices, self._handles, strict=True):
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            name = self._nvml.nvmlDeviceGetName(handle)
            gpus.append(GpuMemory(index, name if isinstance(name, str) else name.decode(),
                                  int(info.total), int(info.used), int(info.free)))
        return MemoryState(
            "nvml", sum(g.total for g in gpus), sum(g.used for g in gpus), sum(g.free for g in gpus), gpus
        )


def monitor_for(budget: int, use_nvml: bool = True, gpus: str = "") -> MemoryMonitor:
    """NVML when asked for, a budget is not forced, and a GPU answers; else the budget.

    ``gpus`` ("0" or "2,3") limits NVML to the GPUs this node's runtime uses (its CUDA_VISIBLE_DEVICES).
    """
    if use_nvml and not budget:
        try:
            return NvmlMonitor([int(g) for g in gpus.split(",")] if gpus.strip() else None)
        except Exception as exc:  # no driver, no GPU, or pynvml missing: all mean "use the budget"
            log.info("NVML unavailable (%s); using a memory budget of %d bytes", exc, budget or DEFAULT_BUDGET)
    return BudgetMonitor(budget)
