"""Test tiers by folder, and shared fixtures: a real redis-server per test session on a free port, flushed per test.

Every test has exactly one tier marker, given by where it lives (``TIERS``):

* ``unit``: pure code in this process; no redis-server, no child processes; the whole tier in seconds
  (``make test-unit``, ``pytest -m unit``).
* ``integration``: real Redis, Celery and ``mm runtime`` processes (tests/integration, tests/runtime,
  and the benchmarks' smoke run).
* ``faults``: integration tests that kill, stall or restart what they started.

The other markers say what a test needs beyond its tier: ``llama`` (llama-cpp-python and the GGUF),
``ollama`` (a real Ollama at OLLAMA_HOST), ``gpu`` (an NVIDIA GPU answering NVML: skipped where none
does) and ``slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from tests.procs import Proc, free_port, wait_for
from tests.support import REDIS_PASSWORD, in_ci

TESTS = Path(__file__).resolve().parent
# tier -> the folders and files (relative to tests/) whose tests it holds
TIERS = {
    "unit": ("unit",),
    "integration": ("integration", "runtime", "test_bench_smoke.py"),
    "faults": ("faults",),
}
# What each collected test is, for tests/unit/test_tiers.py: nodeid -> (tier markers, fixtures it uses).
COLLECTED = pytest.StashKey[dict[str, tuple[list[str], list[str]]]]()

# Property tests: enough examples to keep the unit tier in seconds, and five times more in CI.
# HYPOTHESIS_PROFILE=thorough runs CI's count anywhere.
settings.register_profile("quick", max_examples=200, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("thorough" if in_ci() else "quick"))

# A run started in the background (a non-interactive shell's `&`) inherits SIGINT ignored and would pass that
# on to every child process; a test that presses Ctrl-C on one (SIGINT) needs it at its default, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Chosen before any test imports mm, so the Celery app and every child process use this Redis.
REDIS_PORT = free_port()
os.environ["MM_REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
os.environ["MM_USE_NVML"] = "0"


class RedisServer:
    """The session's redis-server on REDIS_PORT, which fault tests may stop and restart."""

    def __init__(self, data):
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server is not installed (apt-get install -y redis-server)"
        self.data = data
        self.url = f"redis://127.0.0.1:{REDIS_PORT}/0"
        self.proc: Proc | None = None

    def start(self, appendonly: bool = True) -> None:
        self.proc = Proc(
            [self.binary, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--dir", str(self.data), "--save", "",
             "--appendonly", "yes" if appendonly else "no", "--appendfsync", "always" if appendonly else "no"],
            log=self.data / "redis.log",
        )
        wait_for(redis.Redis.from_url(self.url).ping, timeout=15, what="redis-server to answer PING")

    def stop(self) -> None:
        """Stop at once (SIGKILL): what AOF wrote survives, the rest is lost."""
        if self.proc is not None:
            import signal

            self.proc.signal(signal.SIGKILL)
            self.proc.stop()

    def restart(self, appendonly: bool = True) -> None:
        """Kill and start again; without AOF the data is gone (the AOF files are removed)."""
        self.stop()
        if not appendonly:
            for path in self.data.glob("appendonly*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.start(appendonly=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server (AOF on, its own data dir). Fails, never skips, when missing."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, flushed before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url


@pytest.fixture
def password_redis(tmp_path):
    """A private redis-server that requires ``REDIS_PASSWORD``; its port."""
    port = free_port()
    proc = Proc([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                 "--save", "", "--requirepass", REDIS_PASSWORD], log=tmp_path / "redis-auth.log")
    wait_for(redis.Redis(port=port, password=REDIS_PASSWORD).ping, 15, what="redis with a password")
    yield port
    proc.stop()


def tier_of(path: Path) -> str | None:
    """The tier of a test file, by where it lives under tests/ (None: outside every tier)."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return next((tier for tier, places in TIERS.items() if parts and parts[0] in places), None)


def _nvml_answers() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU, or pynvml missing
        return False


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    """Give each test its folder's tier marker; skip ``gpu`` tests where no GPU answers NVML."""
    gpu = None
    for item in items:
        tier = tier_of(item.path)
        if tier is not None:
            item.add_marker(tier)
        if item.get_closest_marker("gpu") is not None:
            gpu = _nvml_answers() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU answers NVML here"))
    config.stash[COLLECTED] = {
        item.nodeid: (sorted({m.name for m in item.iter_markers() if m.name in TIERS}), list(item.fixturenames))
        for item in items
    }
