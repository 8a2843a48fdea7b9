"""Errors the runtime answers with, each carrying the HTTP status and the text Ollama uses."""

from __future__ import annotations

import re

GiB = 1024**3
MiB = 1024**2
KiB = 1024


class RuntimeAPIError(Exception):
    """An error sent to the client as ``{"error": message}`` with ``status``."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(RuntimeAPIError):
    """Malformed JSON, a wrong field type or a missing field (400)."""

    status = 400


class ModelNotFound(RuntimeAPIError):
    """The model is not in this runtime's catalog (404, Ollama's wording)."""

    status = 404

    def __init__(self, model: str):
        super().__init__(f'model "{model}" not found, try pulling it first')


class OutOfMemory(RuntimeAPIError):
    """A load that does not fit the memory budget (500, Ollama's wording)."""

    status = 500

    def __init__(self, required: int, available: int):
        super().__init__(
            f"model requires more system memory ({human_bytes(required)}) "
            f"than is available ({human_bytes(max(0, available))})"
        )
        self.required = required
        self.available = available


class ServerBusy(RuntimeAPIError):
    """``--evict ollama`` with ``OLLAMA_MAX_QUEUE`` requests already waiting (503, Ollama's ``ErrMaxQueue``)."""

    status = 503


class EngineError(RuntimeAPIError):
    """An engine failed to load, run or unload a model (500)."""

    status = 500


def human_bytes(n: int) -> str:
    """Bytes as Ollama prints them (``format.HumanBytes2``): ``"7.5 GiB"``, ``"512.0 MiB"``."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{n / KiB:.1f} KiB"
    return f"{n} B"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
            "ki": KiB, "mi": MiB, "gi": GiB, "ti": 1024**4}


def parse_bytes(text: str | int) -> int:
    """Parse ``"8589934592"``, ``"8GiB"``, ``"512MiB"`` or ``"8GB"`` into a byte count.

    Raises:
        ValueError: when ``text`` is not a size.
    """
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size in bytes: {text!r} (use e.g. 8589934592, 8GiB or 512MiB)")
    unit = match.group(2).lower().rstrip("b")
    return int(float(match.group(1)) * _FACTORS[unit])
