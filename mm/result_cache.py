"""The result cache: deterministic requests answered again from Redis without running.

A request is cacheable when its answer is a function of the request: an embedding, or a generate
or chat job with ``temperature`` 0 or a fixed ``seed``. Its key is the sha256 of a canonical JSON
of every field that changes the answer (:data:`KEY_FIELDS`) plus the model's registry digest and
fixed load options, so a re-pulled model (a new digest) never serves an older answer; priority,
metadata and streaming are left out. Entries are strings with a TTL (``MM_CACHE_TTL_S``, from when
they were stored), kept under ``MM_CACHE_MAX_BYTES`` by evicting the least recently used: a sorted
set of last uses, a hash of sizes and a byte counter, changed only inside Lua scripts so that
concurrent writers keep the counter right. Hits and misses are counted in ``mm:cache:stats``.

The client looks a request up when it is submitted (:func:`lookup`); a worker stores the result
of a cacheable job that ran (:func:`put`, queued into its closing pipeline).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mm import keys, registry, replies
from mm.request_fields import LOAD_OPTIONS, RUNTIME_OPTIONS
from mm.settings import Settings

if TYPE_CHECKING:
    import redis

    from mm.registry import ModelEntry

# The request fields that change the answer. Every other field (priority, metadata, stream, cache, deadline_s,
# warnings, a batch's bookkeeping) is left out of the key; tests/unit/test_result_cache.py checks
# that each JobRequest field is in one list or the other.
KEY_FIELDS = ("model", "kind", "prompt", "messages", "images", "format", "system", "options", "tools", "think",
              "raw", "template", "suffix", "context", "logprobs", "top_logprobs", "dimensions", "truncate")
IGNORED_FIELDS = ("priority", "metadata", "stream", "cache", "warnings", "deadline_s")
MAX_CHUNKS = 512  # a cached answer streams in at most this many chunks
# Result fields that belong to one job, not to its answer.
_PER_JOB = ("id", "node", "worker", "warnings")
_PIECE = re.compile(r"\S+\s*|\s+")

# KEYS: entry, lru, stats. ARGV: model. The entry's value, its last use refreshed; counted as hit or miss.
# Last uses are in microseconds: uses within one millisecond would tie, and ties evict by key, not by age.
_GET = """
local value = redis.call('GET', KEYS[1])
local outcome = value and 'hits' or 'misses'
redis.call('HINCRBY', KEYS[3], outcome, 1)
redis.call('HINCRBY', KEYS[3], outcome .. ':' .. ARGV[1], 1)
if not value then return false end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), KEYS[1])
return value
"""

# KEYS: entry, lru, expiry, sizes, bytes, stats. ARGV: value, ttl ms, max bytes.
# Sweeps expired entries, stores this one, then evicts the least recently used until under the bound.
_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function drop(key)
  local size = tonumber(redis.call('HGET', KEYS[4], key) or '0')
  redis.call('HDEL', KEYS[4], key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
  redis.call('DEL', key)
  if size > 0 then redis.call('DECRBY', KEYS[5], size) end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)) do drop(key) end
local size = string.len(ARGV[1]) + string.len(KEYS[1])
local max = tonumber(ARGV[3])
if size > max then return 0 end
drop(KEYS[1])
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('HSET', KEYS[4], KEYS[1], size)
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), KEYS[1])
redis.call('ZADD', KEYS[3], now + ttl, KEYS[1])
local total = redis.call('INCRBY', KEYS[5], size)
local evicted = 0
while total > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  evicted = evicted + 1
  total = tonumber(redis.call('GET', KEYS[5]) or '0')
end
redis.call('HINCRBY', KEYS[6], 'stores', 1)
if evicted > 0 then redis.call('HINCRBY', KEYS[6], 'evictions', evicted) end
return 1
"""


def deterministic(request: dict[str, Any]) -> bool:
    """Whether ``request`` (a job's payload) always gets the same answer: an embedding, or
    ``temperature`` 0 or a fixed ``seed`` (>= 0; -1 is Ollama's random seed)."""
    if request.get("kind") == "embed":
        return True
    options = request.get("options") or {}
    seed = options.get("seed")
    return options.get("temperature") == 0 or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0)


def key_for(request: dict[str, Any], digest: str, load_options: dict[str, Any]) -> str | None:
    """The cache key of ``request`` run on the model version ``digest`` with its fixed ``load_options``;
    None when it is not cacheable (not deterministic, or the model's digest is unknown)."""
    if not digest or not deterministic(request):
        return None
    fields = {name: request[name] for name in KEY_FIELDS if request.get(name) not in (None, [], {}, "")}
    if "options" in fields:  # 0 and 0.0 are one temperature to the runtime
        types = RUNTIME_OPTIONS | LOAD_OPTIONS
        fields["options"] = {k: float(v) if types.get(k) is float and isinstance(v, int) else v
                             for k, v in fields["options"].items()}
    canonical = json.dumps({"request": fields, "digest": digest, "load_options": load_options},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return keys.cache_entry(hashlib.sha256(canonical.encode()).hexdigest())


def entry_key(request: dict[str, Any], entry: ModelEntry | None) -> str | None:
    """The cache key of ``request`` for the model as its registry ``entry`` describes it."""
    return key_for(request, entry.digest, entry.load_options) if entry is not None else None


def lookup(r: redis.Redis, request: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(key, the cached result or None) for a cacheable ``request``; (None, None) for another.

    A lookup of a cacheable request counts as a hit or a miss; the entry's last use is refreshed.
    """
    if not deterministic(request):
        return None, None  # before reading the registry: most requests end here
    key = entry_key(request, registry.get(r, request["model"]))
    if key is None:
        return None, None
    raw = r.register_script(_GET)(keys=[key, keys.CACHE_LRU, keys.CACHE_STATS], args=[request["model"]])
    return key, (json.loads(raw) if raw else None)


def put(pipe: redis.client.Pipeline, key: str, result: dict[str, Any], settings: Settings) -> None:
    """Queue into ``pipe`` storing ``result`` (a job's successful result) under ``key``, evicting the
    least recently used entries past ``MM_CACHE_MAX_BYTES``; an entry larger than that is not stored."""
    value = json.dumps({k: v for k, v in result.items() if k not in _PER_JOB}, separators=(",", ":"))
    script = pipe.register_script(_PUT)
    script(keys=[key, keys.CACHE_LRU, keys.CACHE_EXPIRY, keys.CACHE_SIZES, keys.CACHE_BYTES, keys.CACHE_STATS],
           args=[value, max(1, int(settings.cache_ttl_s * 1000)), settings.cache_max_bytes], client=pipe)


def served(cached: dict[str, Any], job_id: str, warnings: tuple[str, ...] = ()) -> dict[str, Any]:
    """The result of job ``job_id`` answered from ``cached``: the stored answer, with timings that say
    it was cached (no queue wait, load or runtime; the tokens as first counted; ``saved_runtime_s``
    the runtime seconds it took when it ran)."""
    stored = cached.get("timings") or {}
    timings = {"cached": True, "queue_wait_s": 0.0, "load_s": 0.0, "runtime_load_s": 0.0,
               "prompt_tokens": int(stored.get("prompt_tokens", 0)), "prompt_eval_s": 0.0,
               "eval_tokens": int(stored.get("eval_tokens", 0)), "eval_s": 0.0, "tokens_per_s": 0.0,
               "runtime_s": 0.0, "saved_runtime_s": float(stored.get("runtime_s", 0.0))}
    result = {**cached, "id": job_id, "node": "", "worker": "", "timings": timings}
    if warnings:
        result["warnings"] = list(warnings)
    return result


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _pieces(text: str) -> list[str]:
    """``text`` cut into word-sized pieces (at most MAX_CHUNKS) that join back into it."""
    words = _PIECE.findall(text)
    per = max(1, -(-len(words) // MAX_CHUNKS))
    return ["".join(words[i:i + per]) for i in range(0, len(words), per)]


def chunks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A cached generate or chat ``result`` as the Ollama stream chunks a worker would publish:
    thinking, the text piece by piece (whole, with its logprobs, when it has them), tool calls,
    then the runtime's final ``done`` chunk."""
    kind, created = result["kind"], _now_iso()
    head = {"model": result["model"], "created_at": created, "done": False}
    message = result.get("message") or {}
    thinking = result.get("thinking") if kind == "generate" else message.get("thinking")
    text = result.get("response", "") if kind == "generate" else message.get("content", "")

    def chunk(content: str = "", **more: Any) -> dict[str, Any]:
        if kind == "generate":
            return {**head, "response": content, **more}
        fields = {k: more.pop(k) for k in ("thinking", "tool_calls") if k in more}
        return {**head, "message": {"role": "assistant", "content": content, **fields}, **more}

    out = [chunk(thinking=thinking)] if thinking else []
    if result.get("logprobs"):
        out.append(chunk(text, logprobs=result["logprobs"]))
    else:
        out.extend(chunk(piece) for piece in _pieces(text))
    if kind == "chat" and message.get("tool_calls"):
        out.append(chunk(tool_calls=message["tool_calls"]))
    final = {**head, **(result.get("runtime") or {}), "created_at": created, "done": True}
    final.setdefault("done_reason", result.get("done_reason") or "stop")
    if kind == "generate":
        final["response"] = ""
        if result.get("context"):
            final["context"] = result["context"]
    else:
        final["message"] = {"role": "assistant", "content": ""}
    return [*out, final]


def stats(r: redis.Redis) -> dict[str, Any]:
    """The cache's counters (hits, misses, stores, evictions; per model under ``models``), entries and bytes."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.CACHE_STATS)
    pipe.zcard(keys.CACHE_LRU)
    pipe.get(keys.CACHE_BYTES)
    raw, entries, size = pipe.execute()
    counters = {replies.text(k): int(v) for k, v in raw.items()}
    out: dict[str, Any] = {name: counters.pop(name, 0) for name in ("hits", "misses", "stores", "evictions")}
    models: dict[str, dict[str, int]] = {}
    for field, n in counters.items():
        outcome, _, model = field.partition(":")
        models.setdefault(model, {"hits": 0, "misses": 0})[outcome] = n
    return out | {"models": models, "entries": int(entries), "bytes": int(size or 0)}
