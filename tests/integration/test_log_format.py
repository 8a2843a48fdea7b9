"""Logs an operator can follow: with MM_LOG_FORMAT=json every line of every mm process of a run is
one JSON object naming its component (and job, model, node where there is one), and no secret
the run set (Redis password, API keys) appears in any log line or in ``mm config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.gateway_proc import start_gateway
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, REDIS_PASSWORD, sim_model

MODEL = sim_model("logged:1b", load_bandwidth=10 * GB, eval_rate=2000)
PASSWORD = REDIS_PASSWORD
API_KEY = "sk-log-test-key-7d1e"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_whole_run_logs_json_lines_with_components_and_job_context_and_no_secret(tmp_path, password_redis):
    settings = {"log_format": "json", "gateway_api_keys": API_KEY}
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_redis}/0"
    with sim_node(tmp_path, url, [MODEL], 4 * GB, **settings) as stack:
        proc, url = start_gateway(tmp_path, stack.env, "gateway")
        try:
            answer = httpx.post(f"{url}/api/generate", json={"model": MODEL["name"], "prompt": "hi", "stream": False},
                                headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
            assert answer.status_code == 200, answer.text
            job_id = answer.headers["X-MM-Job-Id"]
            refused = httpx.get(f"{url}/api/stats", headers={"Authorization": "Bearer wrong"}, timeout=10)
            assert refused.status_code == 401
        finally:
            proc.stop()
        config = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "config"],
                                capture_output=True, text=True, timeout=60, env=stack.env)
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log") if p.name != "redis-auth.log"}

    lines = {name: json_lines(text) for name, text in logs.items()}  # every line parses
    components = {line["component"] for parsed in lines.values() for line in parsed}
    assert {"api", "node", "scheduler", "worker", "runtime"} <= components
    about_job = [line for line in lines["w1.log"] if line.get("job_id") == job_id]
    assert about_job and all(line["model"] == MODEL["name"] and line["node"] == stack.node for line in about_job)
    assert all({"ts", "level", "component", "logger", "message"} <= set(line) for p in lines.values() for line in p)
    for text in [*logs.values(), config.stdout, config.stderr]:
        assert PASSWORD not in text and API_KEY not in text


def test_text_logs_name_the_component_and_job_and_mm_logs_shows_the_jobs_path(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB) as stack:
        import mm

        job = mm.submit(MODEL["name"], "hello", options={"num_predict": 4})
        job.get(timeout=60)
        wait_for(lambda: f"job={job.id}" in stack.procs["w1"].output(), 10, what="the job's log line")
        trail = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "logs", job.id],
                               capture_output=True, text=True, timeout=60, env=stack.env)
    assert trail.returncode == 0, trail.stderr
    steps = [line.split()[2:4] for line in trail.stdout.splitlines()]
    assert [s for s in steps if s[0] in ("queue", "worker")] == [["queue", "submitted:"], ["worker", "started"],
                                                                  ["worker", "complete"]]
    assert ["node", "load"] in steps  # the load this job waited for, between its submission and start
    assert steps.index(["node", "load"]) < steps.index(["worker", "started"])
    worker_log = (tmp_path / "w1.log").read_text()
    line = next(x for x in worker_log.splitlines() if f"job={job.id}" in x)
    assert "[worker]" in line and f"model={MODEL['name']}" in line and not line.startswith("{")
    assert os.environ.get("MM_LOG_FORMAT", "text") == "text"
