"""The model registry: what every runtime serves, kept in the Redis hash ``mm:models``.

Models are synced from each node's runtime ``/api/tags`` (a model pulled into a runtime becomes
schedulable with no other step). Each entry keeps a size estimate (tag size x multiplier), the
real size learned from ``/api/ps`` after a load, fixed load options, max parallel and pinned, and
what the runtime's ``/api/show`` says of the model (capabilities, context length), which
validation uses to refuse a job the model cannot run before it is enqueued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from mm import keys, replies
from mm.settings import Settings
from mm.validation import ModelFacts


@dataclass
class ModelEntry:
    name: str
    tag_size: int
    size_estimate: int
    learned_size: int = 0
    digest: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    num_ctx: int = 4096
    max_parallel: int = 4
    pinned: bool = False
    nodes: list[str] = field(default_factory=list)
    synced_at: float = 0.0
    capabilities: list[str] | None = None  # from /api/show; None: not known yet
    context_length: int = 0  # the model's own context, from /api/show; 0: not known
    max_num_predict: int = 0  # this model's num_predict ceiling; 0: MM_MAX_NUM_PREDICT

    @property
    def size(self) -> int:
        """Bytes the model is expected to occupy when resident."""
        return self.learned_size or self.size_estimate

    @property
    def load_options(self) -> dict[str, Any]:
        """Options fixed per model so clients cannot force a reload."""
        return {"num_ctx": self.num_ctx}

    def facts(self) -> ModelFacts:
        """What validation checks a job for this model against."""
        return ModelFacts(num_ctx=self.num_ctx, context_length=self.context_length,
                          capabilities=None if self.capabilities is None else frozenset(self.capabilities),
                          max_num_predict=self.max_num_predict)


_FIELDS = frozenset(ModelEntry.__dataclass_fields__)


def decode(raw: bytes | str) -> ModelEntry:
    """A registry entry from its stored JSON (fields a newer mm wrote are ignored)."""
    return ModelEntry(**{k: v for k, v in json.loads(raw).items() if k in _FIELDS})


def all_models(r: redis.Redis) -> dict[str, ModelEntry]:
    """Every registered model by name."""
    return {k.decode() if isinstance(k, bytes) else k: decode(v) for k, v in r.hgetall(keys.MODELS).items()}


def get(r: redis.Redis, name: str) -> ModelEntry | None:
    raw = r.hget(keys.MODELS, name)
    return decode(raw) if raw else None


def names(r: redis.Redis) -> frozenset[str]:
    return frozenset(k.decode() if isinstance(k, bytes) else k for k in r.hkeys(keys.MODELS))


def save(r: redis.Redis, entry: ModelEntry) -> None:
    """Register or overwrite one entry as given (operators and benchmarks; nodes use sync_node)."""
    r.hset(keys.MODELS, entry.name, json.dumps(asdict(entry)))


def sync_node(r: redis.Redis, node: str, tags: Iterable[dict[str, Any]], settings: Settings) -> list[str]:
    """Merge one node's ``/api/tags`` models into the registry; return names newly added.

    A model no longer listed by this node loses the node; one listed by no node is removed.
    """
    now = time.time()
    listed = {t["name"]: t for t in tags}

    # Read-modify-write under WATCH, so a concurrent pin or learned size is never overwritten.
    def merge(pipe: redis.client.Pipeline) -> list[str]:
        existing = {replies.text(k): decode(v) for k, v in pipe.hgetall(keys.MODELS).items()}
        added, writes, deletes = [], {}, []
        for name, tag in listed.items():
            entry = existing.get(name)
            size = int(tag.get("size") or 0)
            if entry is None:
                entry = ModelEntry(
                    name=name, tag_size=size, size_estimate=int(size * settings.size_multiplier),
                    num_ctx=settings.default_num_ctx, max_parallel=settings.default_max_parallel,
                )
                added.append(name)
            elif entry.digest and entry.digest != tag.get("digest", ""):
                entry.learned_size = 0  # a new version of the model: relearn its size
            entry.tag_size = size
            entry.size_estimate = int(size * settings.size_multiplier)
            entry.digest = tag.get("digest", "")
            entry.details = tag.get("details") or {}
            if tag.get("capabilities") is not None:  # the node learned them from /api/show
                entry.capabilities = sorted(tag["capabilities"])
            if tag.get("context_length"):
                entry.context_length = int(tag["context_length"])
            entry.pinned = entry.pinned or name in settings.pinned
            entry.nodes = sorted(set(entry.nodes) | {node})
            entry.synced_at = now
            writes[name] = json.dumps(asdict(entry))
        for name, entry in existing.items():
            if name not in listed and node in entry.nodes:
                entry.nodes = [n for n in entry.nodes if n != node]
                if entry.nodes:
                    writes[name] = json.dumps(asdict(entry))
                else:
                    deletes.append(name)
        pipe.multi()
        if writes:
            pipe.hset(keys.MODELS, mapping=writes)
        if deletes:
            pipe.hdel(keys.MODELS, *deletes)
        return added

    return replies.transacted(r, merge, keys.MODELS)


def _update(r: redis.Redis, name: str, change: Callable[[ModelEntry], bool]) -> ModelEntry | None:
    """Apply ``change(entry)`` to one entry under WATCH; None if the model is not registered."""

    def txn(pipe: redis.client.Pipeline) -> ModelEntry | None:
        raw = pipe.hget(keys.MODELS, name)
        entry = decode(raw) if raw else None
        pipe.multi()
        if entry is not None and change(entry):
            pipe.hset(keys.MODELS, name, json.dumps(asdict(entry)))
        return entry

    return replies.transacted(r, txn, keys.MODELS)


def learn_size(r: redis.Redis, name: str, size: int) -> None:
    """Record the real resident size seen in ``/api/ps`` after a load."""

    def change(entry: ModelEntry) -> bool:
        if size <= 0 or entry.learned_size == size:
            return False
        entry.learned_size = size
        return True

    _update(r, name, change)


def set_flags(r: redis.Redis, name: str, **flags: Any) -> ModelEntry:
    """Set pinned, max_parallel, num_ctx or max_num_predict on a registered model."""
    for flag in flags:
        if flag not in ("pinned", "max_parallel", "num_ctx", "max_num_predict"):
            raise ValueError(f"{flag} cannot be set")

    def change(entry: ModelEntry) -> bool:
        for flag, value in flags.items():
            setattr(entry, flag, value)
        return True

    entry = _update(r, name, change)
    if entry is None:
        raise KeyError(name)
    return entry
