"""Engines that serve models: ``sim`` (simulated timings) and ``llama`` (llama.cpp on GGUF files)."""

from __future__ import annotations

from typing import Any

from mm.runtime.engines.base import Engine


def make_engine(name: str) -> Engine[Any]:
    """Build the engine called ``name``; llama.cpp is imported only when asked for."""
    if name == "sim":
        from mm.runtime.engines.sim import SimEngine

        return SimEngine()
    if name == "llama":
        from mm.runtime.engines.llama import LlamaEngine

        return LlamaEngine()
    raise ValueError(f"unknown engine {name!r}")
