"""A gateway client waiting for its answer while Redis restarts (AOF) gets the answer, not a 503 for a job
that goes on without it (found by the chaos soak)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from mm import keys
from tests.gateway_proc import ollama_stack
from tests.procs import wait_for
from tests.support import GB, sim_model

MODEL = sim_model("patient:1b", load_bandwidth=10 * GB, eval_rate=40)
TOKENS = 120  # three seconds of generation
OUTAGE_S = 2.0


@pytest.fixture
def restarted_redis(redis_server):
    yield redis_server
    redis_server.restart()  # leave the session's Redis as the next test expects it


def running_job(r) -> str | None:
    for key in r.scan_iter("mm:job:*"):
        if r.hget(key, "status") == b"running":
            return key.decode().removeprefix("mm:job:")
    return None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_ollama_client_gets_its_answer_across_a_redis_restart(tmp_path, redis_url, restarted_redis, stream):
    with ollama_stack(tmp_path, redis_url, [MODEL], 4 * GB) as s:
        answer: dict = {}

        def ask() -> None:
            body = {"model": MODEL["name"], "prompt": "wait for me", "stream": stream,
                    "options": {"num_predict": TOKENS}}
            with httpx.stream("POST", f"{s.url}/api/generate", json=body, timeout=120) as response:
                answer["status"] = response.status_code
                lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
            answer["last"] = lines[-1] if lines else {}
            answer["text"] = "".join(line.get("response", "") for line in lines)

        client = threading.Thread(target=ask)
        client.start()
        job_id = wait_for(lambda: running_job(s.stack.r), 30, what="the job to start")
        restarted_redis.stop()  # SIGKILL; down for longer than redis-py's own retries last
        time.sleep(OUTAGE_S)
        restarted_redis.start()
        client.join(90)

        assert answer["status"] == 200, answer
        assert answer["last"].get("done") is True and answer["last"]["eval_count"] == TOKENS, answer
        wait_for(lambda: s.stack.r.hget(keys.job(job_id), "status") == b"complete", 10, what="the job's record")
