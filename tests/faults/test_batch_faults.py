"""A batch survives every process of mm dying under it, and Redis restarting with AOF: each request
is answered once and none runs twice."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from mm import cancel, keys
from tests.gateway_proc import start_gateway
from tests.procs import wait_for
from tests.runtime_server import runs_twice, start_runtime
from tests.stack import Stack
from tests.support import GB, sim_model

MODELS = [sim_model(f"batchy-{c}:1b", load_bandwidth=4 * GB, eval_rate=100, parallel=2) for c in "ab"]
LINES = 160


@pytest.fixture
def stack(tmp_path, redis_url, redis_server):
    runtime = start_runtime(tmp_path, engine="sim", models=MODELS, memory=4 * GB)
    s = Stack(tmp_path, redis_url, runtime.url, memory_budget=4 * GB, orphan_grace_s=3)
    s.start_broker()
    for name in ("w1", "w2"):
        s.start_worker(name, slots=2)
    s.wait_ready([m["name"] for m in MODELS], ["w1", "w2"])
    s.runtime = runtime
    yield s
    s.stop()
    runtime.stop()
    redis_server.restart()  # leave the session's Redis as the next test expects it


def requests() -> bytes:
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODELS[i % 2]["name"], "max_tokens": 6,
                       "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(LINES)]
    return "\n".join(json.dumps(x) for x in lines).encode()


class Gateway:
    """``mm gateway`` that the test kills and starts again (on a new port)."""

    def __init__(self, tmp, stack):
        self.tmp, self.stack, self.starts = tmp, stack, 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.proc, self.url = start_gateway(self.tmp, self.stack.env, f"gateway-{self.starts}",
                                            files_dir=self.tmp / "files", batch_tick_s=0.2)

    def kill_and_restart(self) -> None:
        self.proc.signal(signal.SIGKILL)
        self.proc.stop()
        self.start()

    def batch(self, batch_id: str) -> dict:
        return httpx.get(f"{self.url}/v1/batches/{batch_id}", timeout=10).raise_for_status().json()

    def create_batch(self) -> str:
        file_id = httpx.post(f"{self.url}/v1/files", files={"file": ("f.jsonl", requests())},
                             data={"purpose": "batch"}, timeout=30).raise_for_status().json()["id"]
        return httpx.post(f"{self.url}/v1/batches", json={"input_file_id": file_id, "completion_window": "24h",
                                                           "endpoint": "/v1/chat/completions"},
                          timeout=30).raise_for_status().json()["id"]

    def wait_ended(self, batch_id: str, timeout: float) -> dict:
        return wait_for(lambda: (b := self.batch(batch_id))["status"] in ("completed", "failed") and b, timeout,
                        what="the batch to end")


def not_ended(r, batch_id: str) -> dict[str, object]:
    """The batch's jobs no worker counted as ended: each one's record and Celery state."""
    counted = set()
    for outcome in ("completed", "failed", "cancelled"):
        counted |= {m.decode() for m in r.smembers(f"mm:batch:{batch_id}:{outcome}")}
    missing = [f"{batch_id}-{i}" for i in range(LINES) if f"{batch_id}-{i}" not in counted]
    return {j: (r.hgetall(f"mm:job:{j}"), (r.get(f"celery-task-meta-{j}") or b"")[:60]) for j in missing}


def kill_and_restart(stack: Stack, name: str) -> float:
    """SIGKILL one of the node's processes and start it again; when it was killed."""
    killed = time.time()
    stack.procs[name].signal(signal.SIGKILL)
    stack.procs[name].stop()
    stack.start_broker() if name == "broker" else stack.start_worker(name, slots=2)
    return killed


def test_a_batch_survives_gateway_worker_leader_and_redis_restarts_answering_each_request_once(
        stack, redis_server, tmp_path, ledger):
    gw = Gateway(tmp_path, stack)
    try:
        batch_id = gw.create_batch()
        began = time.monotonic()
        gw.kill_and_restart()  # while it validates or enqueues

        def ended(at_least: int) -> bool:
            counts = gw.batch(batch_id)["request_counts"]
            return counts["completed"] + counts["failed"] >= at_least

        wait_for(lambda: ended(LINES // 5), 120, what="a fifth of the batch")
        worker_killed = kill_and_restart(stack, "w1")
        wait_for(lambda: ended(2 * LINES // 5), 120, what="two fifths of the batch")
        kill_and_restart(stack, "broker")
        wait_for(lambda: ended(3 * LINES // 5), 120, what="three fifths of the batch")
        redis_server.restart(appendonly=True)
        try:
            done = gw.wait_ended(batch_id, 180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {gw.batch(batch_id)}; not ended: {not_ended(stack.r, batch_id)}") from None

        assert done["status"] == "completed", done
        errors = httpx.get(f"{gw.url}/v1/files/{done['error_file_id']}/content", timeout=30).text \
            if done["error_file_id"] else ""
        assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}, errors
        out = httpx.get(f"{gw.url}/v1/files/{done['output_file_id']}/content", timeout=30).text.splitlines()
        ids = sorted(json.loads(line)["custom_id"] for line in out if line.strip())
        assert ids == sorted(f"c{i}" for i in range(LINES))
        served = stack.runtime.served_spans()
        extra, interrupted = runs_twice(served, [worker_killed])
        twice = extra - interrupted  # a run the runtime finished as its worker died is rerun, not run twice
        assert len(served) == LINES and twice == 0, (worker_killed, {d: t for d, t in served.items() if len(t) > 1})
        ledger("15. a batch under gateway, model-worker, gpu-broker and Redis (AOF) restarts",
               "every request answered once, none run twice", submitted=LINES, completed=len(ids),
               failed=done["request_counts"]["failed"], duplicated=twice, recover_s=time.monotonic() - began)
    finally:
        gw.proc.stop()


@pytest.mark.parametrize("vanished_with", ["redis-restart", "worker-killed"])
def test_a_batch_job_whose_message_the_broker_lost_is_sent_again_and_runs_once(
        stack, redis_server, tmp_path, vanished_with):
    # Given a batch enqueued whole while no model-worker runs, one of whose messages kombu's BRPOP
    # took as Redis or the worker died (the pop saved, the message never recorded as held)
    for name in ("w1", "w2"):
        stack.procs[name].stop()
    gw = Gateway(tmp_path, stack)
    try:
        batch_id = gw.create_batch()
        wait_for(lambda: int(stack.r.hget(keys.batch(batch_id), "enqueued") or 0) == LINES, 60,
                 what="the whole batch to be enqueued")
        lost = f"{batch_id}-7"
        assert cancel.take_off(stack.r, cancel.model_lists([m["name"] for m in MODELS]), lost.__eq__) == [lost]

        # When Redis restarts (AOF), or a model-worker is SIGKILLed, and the workers run the batch
        if vanished_with == "redis-restart":
            redis_server.restart(appendonly=True)
        for name in ("w1", "w2"):
            stack.start_worker(name, slots=2)
        kills = []
        if vanished_with == "worker-killed":
            stack.wait_ready([], ["w1"])
            kills.append(time.time())
            stack.procs["w1"].signal(signal.SIGKILL)
            stack.procs["w1"].stop()

        # Then the batch sends the lost job again once the others have ended, and every request runs once
        done = gw.wait_ended(batch_id, 180)
        assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}, done
        served = stack.runtime.served_spans()
        extra, interrupted = runs_twice(served, kills)  # a run its killed worker never stored runs again
        assert len(served) == LINES and extra == interrupted, {d: t for d, t in served.items() if len(t) > 1}
        assert "jobs lost by the broker were sent again" in gw.proc.output()
    finally:
        gw.proc.stop()
