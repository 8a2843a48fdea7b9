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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server (AOF on, its own data dir). Fails, never skips, when missing."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install -y redis-server)"
    data = tmp_path_factory.mktemp("redis")
    port = REDIS_PORT
    proc = Proc(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec"],
        log=data / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_for(client.ping, timeout=15, what="redis-server to answer PING")
    yield url
    proc.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, flushed before the test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
