"""The status page as a person sees it: headless Chromium renders it against a live stack."""

from __future__ import annotations

import subprocess
import tempfile

import mm
from tests.integration.test_gateway import OPTS, start_gateway
from tests.runtime_server import start_runtime
from tests.stack import Stack
from tests.support import GB, require_binary, sim_model

MODELS = [sim_model("page-a:1b", load_bandwidth=4 * GB, eval_rate=2000)]


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = require_binary("chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,1000", *args],
            capture_output=True, text=True, timeout=120)


def test_the_status_page_renders_nodes_models_and_jobs_and_is_saved_as_a_screenshot(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=MODELS, memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    gateway = None
    try:
        stack.start_broker()
        stack.start_worker("w1")
        stack.wait_ready(["page-a:1b"], ["w1"])
        for i in range(3):
            mm.generate("page-a:1b", f"for the page {i}", options=OPTS, timeout=60)
        gateway, url = start_gateway(tmp_path, stack.env, "gateway")

        dom = chromium("--dump-dom", f"{url}/").stdout
        shot = tmp_path / "status.png"
        chromium(f"--screenshot={shot}", f"{url}/")

        assert stack.node in dom and "page-a:1b" in dom  # filled in by the page's script from /api/stats
        assert stack.hostname("w1") in dom
        assert shot.exists() and shot.stat().st_size > 10_000
        print(f"\nstatus page screenshot: {shot}")
    finally:
        if gateway is not None:
            gateway.stop()
        stack.stop()
        runtime.stop()
