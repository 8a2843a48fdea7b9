"""``mm batch`` as a user runs it: the real CLI as a subprocess against a live gateway, real workers
and the sim runtime (submit and wait, status, list, cancel, results, bad files, a gateway that is down),
and the batches on the status page's data (/api/stats).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.gateway_proc import ollama_stack, start_gateway
from tests.integration.test_gateway import schema_of
from tests.procs import free_port, wait_for
from tests.support import GB, sim_model

FAST, SLOW = "sim-cli:1b", "sim-cli-slow:1b"
MODELS = [
    sim_model(FAST, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=5_000, parallel=4),
    sim_model(SLOW, load_bandwidth=4 * GB, prompt_rate=50_000, eval_rate=20, parallel=1),
]
CLI = [sys.executable, "-c", "from mm.cli import main; main()", "batch"]


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("batch-cli")
    with ollama_stack(tmp, redis_server.url, MODELS, 4 * GB, files_dir=tmp / "files", batch_tick_s=0.2) as s:
        yield s


def mm_batch(gw, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``mm batch ARGS`` with MM_GATEWAY_URL pointing at the stack's gateway."""
    env = {**os.environ, "MM_GATEWAY_URL": gw.url, **(env or {})}
    env.pop("MM_GATEWAY_API_KEYS", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def chat_line(custom_id: str, model: str, text: str, max_tokens: int = 4) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}}


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def batch_object(gw, batch_id: str) -> dict:
    done = mm_batch(gw, "status", batch_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_final(gw, batch_id: str, timeout: float = 90) -> dict:
    seen = []
    wait_for(lambda: seen.append(batch_object(gw, batch_id)) or seen[-1]["status"] in
             ("completed", "failed", "expired", "cancelled"), timeout, interval=0.3, what=f"batch {batch_id}")
    return seen[-1]


def stats_batches(gw, batch_id: str, part: str) -> dict | None:
    """The batch's row in the ``part`` (live or finished) of the status page's data, if it is there."""
    rows = httpx.get(f"{gw.url}/api/stats", timeout=10).json()["batches"][part]
    return next((b for b in rows if b["id"] == batch_id), None)


def test_submit_wait_writes_every_custom_id_once_to_out(gw, tmp_path):
    requests = write_jsonl(tmp_path / "requests.jsonl",
                           [chat_line(f"req-{i}", FAST if i % 2 else SLOW, f"q {i}", 1) for i in range(20)])
    out = tmp_path / "results.jsonl"

    done = mm_batch(gw, "submit", str(requests), "--priority", "high", "--meta", "run=cli", "--wait", "--out", str(out))

    assert done.returncode == 0, done.stderr
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(a["custom_id"] for a in answers) == sorted(f"req-{i}" for i in range(20))
    assert all(a["response"]["status_code"] == 200 for a in answers)
    assert "20/20 completed" in done.stderr and f"output: {out}" in done.stderr
    assert not (tmp_path / "results.errors.jsonl").exists() and done.stdout == ""
    batch_id = done.stderr.split()[1]
    assert batch_object(gw, batch_id)["metadata"] == {"run": "cli", "priority": "high"}


def test_status_list_and_results_show_a_finished_batch(gw, tmp_path):
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(f"s{i}", FAST, f"hi {i}") for i in range(3)])

    submitted = mm_batch(gw, "submit", str(requests))
    batch_id = submitted.stdout.strip()
    wait_final(gw, batch_id)
    status = mm_batch(gw, "status", batch_id)
    listed = mm_batch(gw, "list", "--limit", "5")
    results = mm_batch(gw, "results", batch_id)
    no_errors = mm_batch(gw, "results", batch_id, "--errors")

    assert submitted.returncode == 0 and batch_id.startswith("batch_"), submitted.stderr
    assert status.stdout.startswith(f"{batch_id}  completed  /v1/chat/completions")
    assert "3/3 done: 3 completed, 0 failed" in status.stdout
    assert listed.stdout.splitlines()[0].split() == ["ID", "STATUS", "ENDPOINT", "DONE", "CREATED"]
    assert f"{batch_id}  completed  /v1/chat/completions  3/3" in listed.stdout
    assert sorted(json.loads(x)["custom_id"] for x in results.stdout.splitlines()) == ["s0", "s1", "s2"]
    assert no_errors.returncode == 1 and "has no error file" in no_errors.stderr


def test_a_cancelled_batch_is_live_on_the_status_data_then_its_dropped_requests_are_in_the_error_file(gw, tmp_path):
    requests = write_jsonl(tmp_path / "slow.jsonl", [chat_line(f"x{i}", SLOW, f"slow {i}", 8) for i in range(12)])
    batch_id = mm_batch(gw, "submit", str(requests)).stdout.strip()
    wait_for(lambda: batch_object(gw, batch_id)["request_counts"]["completed"] >= 1, 90, interval=0.3,
             what="a first slow answer")

    row = wait_for(lambda: stats_batches(gw, batch_id, "live"), 10, interval=0.3, what="the batch as live")
    cancelled = mm_batch(gw, "cancel", batch_id)
    final = wait_final(gw, batch_id)
    errors = mm_batch(gw, "results", batch_id, "--errors")
    again = mm_batch(gw, "cancel", batch_id)

    assert row["status"] == "in_progress" and row["total"] == 12 and row["completed"] >= 1
    assert row["endpoint"] == "/v1/chat/completions" and row["created_at"] > 0
    assert cancelled.returncode == 0 and cancelled.stdout.split()[1] in ("cancelling", "cancelled")
    assert final["status"] == "cancelled"
    assert {json.loads(x)["error"]["code"] for x in errors.stdout.splitlines()} == {"batch_cancelled"}
    assert again.returncode == 1 and "already cancelled" in again.stderr and "\n" not in again.stderr.strip()
    shown = wait_for(lambda: stats_batches(gw, batch_id, "finished"), 10, interval=0.3, what="the batch as finished")
    assert shown["status"] == "cancelled" and shown["ended_at"] and shown["cancelled"] >= 1
    schema_of(gw.url)["/api/stats"]["GET"].validate_response(httpx.get(f"{gw.url}/api/stats", timeout=10))


def test_a_bad_file_fails_the_batch_and_names_the_bad_line(gw, tmp_path):
    requests = write_jsonl(tmp_path / "bad.jsonl", [chat_line("ok", FAST, "fine"), "{not json",
                                                     chat_line("who", "no-such:model", "hello")])

    done = mm_batch(gw, "submit", str(requests), "--wait", "--out", str(tmp_path / "out.jsonl"))

    assert done.returncode == 1
    assert "failed" in done.stderr and "line 2: invalid_json_line" in done.stderr
    assert "line 3: model_not_found" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_file_without_a_url_needs_endpoint(gw, tmp_path):
    requests = write_jsonl(tmp_path / "nourl.jsonl", ["{not json"])

    done = mm_batch(gw, "submit", str(requests))

    assert done.returncode == 2 and "pass --endpoint" in done.stderr


def test_a_gateway_that_is_down_is_named_with_how_to_start_it(gw):
    url = f"http://127.0.0.1:{free_port()}"

    done = mm_batch(gw, "--url", url, "list")

    assert done.returncode == 1
    assert done.stderr.strip() == (f"Error: the gateway at {url} is not answering: start it with `mm gateway`, "
                                   "or point --url (MM_GATEWAY_URL) at a running one")


def test_a_gateway_with_keys_takes_mm_api_key_and_refuses_a_missing_one_in_one_line(gw, tmp_path):
    proc, url = start_gateway(tmp_path, gw.stack.env, "gateway-keys", files_dir=tmp_path / "files",
                              gateway_api_keys="k-one,k-two")
    try:
        refused = mm_batch(gw, "--url", url, "list")
        accepted = mm_batch(gw, "--url", url, "list", env={"MM_API_KEY": "k-two"})
    finally:
        proc.stop()

    assert refused.returncode == 1 and refused.stderr.startswith("Error: the gateway answered 401: ")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines()[0].split()[0] == "ID"
