"""Redis near its maxmemory: submissions are refused whole with a clear error (CLI, Ollama API,
OpenAI API) while Redis could still take writes, nothing half-written; `mm check` says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest
import redis

from mm import keys, registry
from tests.gateway_proc import start_gateway
from tests.procs import Proc, free_port, wait_for
from tests.stack import REPO
from tests.support import GB

MODEL = "full:1b"
MAXMEMORY = 4 * 1024 * 1024


@pytest.fixture
def full_redis(tmp_path):
    port = free_port()
    proc = Proc([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                 "--save", "", "--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"],
                log=tmp_path / "redis-full.log")
    r = redis.Redis(port=port)
    try:
        wait_for(r.ping, 15, what="redis with a maxmemory")
        registry.save(r, registry.ModelEntry(name=MODEL, tag_size=GB, size_estimate=GB, digest="sha256:full"))
        n = 0
        while int(r.info("memory")["used_memory"]) < 0.93 * MAXMEMORY:  # Redis still takes writes below 100%
            r.set(f"filler:{n}", b"x" * 32 * 1024)
            n += 1
        assert int(r.info("memory")["used_memory"]) < MAXMEMORY
        yield f"redis://127.0.0.1:{port}/0", r
    finally:
        proc.stop()


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"MM_REDIS_URL": url, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def written(r: redis.Redis) -> list[bytes]:
    return [k for k in r.keys("*") if k.startswith((b"mm:job:", b"mm.model.", b"celery", b"_kombu"))]


def test_submissions_are_refused_whole_near_maxmemory_and_mm_check_says_why(full_redis, tmp_path):
    url, r = full_redis

    enqueued = cli(url, "enqueue", MODEL, "hello")
    proc, gateway = start_gateway(tmp_path, os.environ | {"MM_REDIS_URL": url, "PYTHONPATH": str(REPO)}, "gateway")
    try:
        ollama = httpx.post(f"{gateway}/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False},
                            timeout=30)
        openai = httpx.post(f"{gateway}/v1/chat/completions", timeout=30,
                            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    finally:
        proc.stop()
    check = cli(url, "check")

    assert enqueued.returncode != 0 and "of its maxmemory" in enqueued.stderr
    assert ollama.status_code == 503 and "of its maxmemory" in ollama.json()["error"]
    assert ollama.headers["Retry-After"] == "5"
    assert openai.status_code == 503 and openai.json()["error"]["code"] == "overloaded"
    assert written(r) == [] and r.llen(keys.model_queue(MODEL)) == 0
    assert check.returncode == 1 and "Redis is using 9" in check.stderr and "new jobs are refused" in check.stderr


def test_mm_check_warns_of_an_evicting_policy(full_redis):
    url, r = full_redis
    r.delete(*r.keys("filler:*"))
    r.config_set("maxmemory-policy", "allkeys-lru")

    check = cli(url, "check")

    assert check.returncode == 1 and "maxmemory-policy is allkeys-lru" in check.stderr
    assert "set maxmemory-policy noeviction" in check.stderr
