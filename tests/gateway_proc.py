"""``mm gateway`` as a child process for tests, and a whole Ollama-speaking stack behind it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.procs import Proc, free_port, wait_for
from tests.stack import REPO, Stack, sim_node


def start_gateway(tmp: Path, env: dict[str, str], name: str, **settings: object) -> tuple[Proc, str]:
    """``mm gateway`` on a free port with ``env`` plus ``MM_<SETTING>`` overrides; waits for /api/health."""
    port = free_port()
    env = env | {f"MM_{k.upper()}": str(v) for k, v in settings.items()} | {"PYTHONUNBUFFERED": "1"}
    proc = Proc([sys.executable, "-c", "from mm.cli import main; main()", "gateway", "--port", str(port)],
                log=tmp / f"{name}.log", env=env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: not proc.alive() or httpx.get(f"{url}/api/health", timeout=2).status_code == 200, 30,
                 what=f"gateway {name}")
        assert proc.alive(), proc.output()
    except BaseException:
        proc.stop()
        raise
    return proc, url


@dataclass
class OllamaStack:
    """A sim runtime, a node (gpu-broker and model-workers) and a gateway, all real processes."""

    stack: Stack
    url: str
    gateway: Proc
    secure_url: str = ""  # a second gateway that requires an API key (secured_ollama_stack)

    @property
    def runtime_url(self) -> str:
        return self.stack.runtime.url


@contextmanager
def ollama_stack(tmp: Path, redis_url: str, models: list[dict[str, Any]], memory: int, slots: int = 2,
                 **gateway_settings: object) -> Iterator[OllamaStack]:
    """:func:`tests.stack.sim_node` serving ``models`` (one model-worker with ``slots``) plus a gateway
    in front; all stopped at the end."""
    with sim_node(tmp, redis_url, models, memory, workers=("w1",), slots=slots, runtime_retries=0) as stack:
        proc, url = start_gateway(tmp, stack.env, "gateway", **gateway_settings)
        try:
            yield OllamaStack(stack, url, proc)
        finally:
            proc.stop()


@contextmanager
def secured_ollama_stack(tmp: Path, redis_url: str, models: list[dict[str, Any]], memory: int,
                         api_key: str) -> Iterator[OllamaStack]:
    """:func:`ollama_stack` on a flushed Redis, plus a second gateway requiring ``api_key`` at ``secure_url``."""
    redis.Redis.from_url(redis_url).flushall()
    with ollama_stack(tmp, redis_url, models, memory) as s:
        proc, s.secure_url = start_gateway(tmp, s.stack.env, "gateway-secure", gateway_api_keys=api_key)
        try:
            yield s
        finally:
            proc.stop()
