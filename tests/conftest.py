"""Shared fixtures: a real redis-server per test session on a free port, flushed per test."""

from __future__ import annotations

import os
import shutil

import pytest
import redis

from tests.procs import Proc, free_port, wait_for

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
