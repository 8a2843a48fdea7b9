"""What the scheduler sees (a snapshot) and what it decides (actions).

Plain frozen dataclasses with no I/O, shared by the live leader, the policy and the
discrete-event simulator. Demand is aggregated per model, never per job, so a snapshot
stays small with millions of queued jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRIORITY_CLASSES = ("high", "normal", "low")


@dataclass(frozen=True)
class Demand:
    """Queued work for one model, per priority class."""

    model: str
    queued: dict[str, int] = field(default_factory=dict)  # class -> jobs waiting
    oldest_wait_s: dict[str, float] = field(default_factory=dict)  # class -> age of its oldest job

    @property
    def total(self) -> int:
        return sum(self.queued.values())


@dataclass(frozen=True)
class ModelInfo:
    """Registry facts about one model."""

    name: str
    size: int  # bytes it occupies when resident (learned, else estimated)
    max_parallel: int = 4
    pinned: bool = False


@dataclass(frozen=True)
class Resident:
    """A model resident on a node."""

    model: str
    size: int
    loaded_at: float
    last_used: float
    in_flight: int = 0  # jobs running on it now


@dataclass(frozen=True)
class Worker:
    """A model-worker process on a node."""

    hostname: str
    slots: int
    bound: str | None = None  # model whose queue it consumes
    in_flight: int = 0


@dataclass(frozen=True)
class Node:
    """One GPU host: its memory, resident models and workers."""

    name: str
    total: int
    free: int  # bytes free now (NVML, or budget minus resident sizes)
    resident: dict[str, Resident] = field(default_factory=dict)
    workers: tuple[Worker, ...] = ()
    pending: frozenset[str] = frozenset()  # models with a load/unload under way here


@dataclass(frozen=True)
class Snapshot:
    now: float
    models: dict[str, ModelInfo]
    demand: dict[str, Demand]
    nodes: dict[str, Node]
    safety_margin: int = 0
    min_residency_s: float = 10.0
    aging_s: float = 60.0
    placement: str = "spread"  # "spread": most free memory first; "binpack": least free memory that fits
    replica_backlog: int = 0  # queued jobs per parallel slot of every copy that call for one more copy (0: never)


@dataclass(frozen=True)
class Load:
    node: str
    model: str


@dataclass(frozen=True)
class Unload:
    node: str
    model: str
    reason: str


@dataclass(frozen=True)
class Bind:
    node: str
    worker: str
    model: str


@dataclass(frozen=True)
class Unbind:
    node: str
    worker: str
    model: str


@dataclass(frozen=True)
class Reject:
    """Jobs of ``model`` can never run (e.g. it fits on no node): fail them with ``reason``."""

    model: str
    reason: str


Action = Load | Unload | Bind | Unbind | Reject
