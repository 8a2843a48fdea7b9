"""Reading a runtime's answers for setup problems: pure, no services."""

from __future__ import annotations

import ollama

from mm import node_problems
from mm.runtime.errors import OutOfMemory
from tests.support import GB

OOM = "model requires more system memory (1.2 GiB) than is available (476.8 MiB)"


def test_an_out_of_memory_answer_gives_the_size_needed_and_the_memory_free():
    assert node_problems.required_bytes(OOM) == int(1.2 * 1024**3)
    assert node_problems.available_bytes(OOM) == int(476.8 * 1024**2)
    assert node_problems.available_bytes("CUDA error: out of memory") is None


def test_the_embedded_runtime_says_out_of_memory_as_ollama_does():
    said = str(OutOfMemory(3 * GB, GB))
    assert node_problems.required_bytes(said) and node_problems.available_bytes(said)


def test_a_404_or_a_body_that_is_not_json_is_not_an_ollama_api_but_a_refused_connection_is_just_down():
    not_found = ollama.ResponseError("404 page not found", 404)
    assert "is not an Ollama API (GET /api/ps: 404)" in node_problems.not_ollama("http://x", not_found)
    assert "not an Ollama API" in node_problems.not_ollama("http://x", ValueError("Expecting value"))
    assert node_problems.not_ollama("http://x", ConnectionError("refused")) is None
    assert node_problems.not_ollama("http://x", ollama.ResponseError("busy", 503)) is None


def test_a_budget_is_too_large_only_beyond_the_rounding_of_the_runtime_figures():
    holds = node_problems.RuntimeHolds(resident=2 * GB, available=GB // 2)
    assert holds.capacity == 2.5 * GB
    assert holds.below(8 * GB) and not holds.below(int(2.6 * GB))
    assert "Set MM_MEMORY_BUDGET to 2500000000 or less" in holds.budget_too_large(8 * GB, "m")
