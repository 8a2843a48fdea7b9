"""The status page as a person sees it: headless Chromium renders it against a live stack."""

from __future__ import annotations

import json
import subprocess
import tempfile

import httpx

import mm
from tests.integration.test_gateway import OPTS, start_gateway
from tests.procs import wait_for
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


def finished_batch(url: str) -> str:
    """A batch of three requests through /v1/files and /v1/batches, waited for; its id."""
    line = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "page-a:1b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
    data = "".join(json.dumps({"custom_id": f"p{i}", **line}) + "\n" for i in range(3)).encode()
    file_id = httpx.post(f"{url}/v1/files", data={"purpose": "batch"}, files={"file": ("p.jsonl", data)}).json()["id"]
    batch_id = httpx.post(f"{url}/v1/batches", json={"input_file_id": file_id, "endpoint": line["url"],
                                                     "completion_window": "24h"}).json()["id"]
    wait_for(lambda: httpx.get(f"{url}/v1/batches/{batch_id}").json()["status"] == "completed", 60, interval=0.2,
             what="the page's batch")
    return batch_id


def test_the_status_page_renders_nodes_models_jobs_and_batches_and_is_saved_as_a_screenshot(tmp_path, redis_url):
    runtime = start_runtime(tmp_path, engine="sim", models=MODELS, memory=4 * GB)
    stack = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB)
    gateway = None
    try:
        stack.start_broker()
        stack.start_worker("w1")
        stack.wait_ready(["page-a:1b"], ["w1"])
        for i in range(3):
            mm.generate("page-a:1b", f"for the page {i}", options=OPTS, timeout=60)
        gateway, url = start_gateway(tmp_path, stack.env, "gateway", files_dir=tmp_path / "files", batch_tick_s=0.2)
        batch_id = finished_batch(url)

        dom = chromium("--dump-dom", f"{url}/").stdout
        shot = tmp_path / "status.png"
        chromium(f"--screenshot={shot}", f"{url}/")

        assert stack.node in dom and "page-a:1b" in dom  # filled in by the page's script from /api/stats
        assert stack.hostname("w1") in dom
        assert batch_id in dom and "3/3" in dom  # the batches card, from /api/stats
        assert shot.exists() and shot.stat().st_size > 10_000
        print(f"\nstatus page screenshot: {shot}")
    finally:
        if gateway is not None:
            gateway.stop()
        stack.stop()
        runtime.stop()
