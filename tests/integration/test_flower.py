"""Flower, as `mm up` and compose run it: behind basic auth, showing mm's workers by node."""

from __future__ import annotations

import os
import sys

import httpx

from tests.procs import Proc, free_port, wait_for
from tests.runtime_server import start_runtime
from tests.stack import REPO, Stack
from tests.support import GB, sim_model


def test_flower_refuses_without_credentials_and_lists_mm_workers_with_them(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=[sim_model("fl:1b")])
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    port = free_port()
    flower = Proc([sys.executable, "-m", "celery", "-A", "mm.app", "flower", f"--port={port}", "--address=127.0.0.1",
                   "--basic-auth=admin:flower-pass"], log=tmp_path / "flower.log",
                  env=os.environ | {"MM_REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    try:
        stack.start_broker()
        stack.start_worker("model-1")
        stack.wait_ready(["fl:1b"], ["model-1"])
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/healthcheck", timeout=2).is_success, 60, what="flower")

        assert httpx.get(f"{url}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{url}/api/workers", auth=("admin", "wrong"), timeout=5).status_code == 401
        def listed() -> set[str]:
            return set(httpx.get(f"{url}/api/workers?refresh=1", auth=("admin", "flower-pass"), timeout=10).json())

        wait_for(lambda: {"broker@n1", "model-1@n1"} <= listed(), 60, what="both workers in flower")
    finally:
        flower.stop()
        stack.stop()
        runtime.stop()
