"""``mm enqueue`` as a newcomer meets it: the real CLI as a subprocess against a real node.

Real redis-server, a gpu-broker and a model-worker as Celery processes, the embedded runtime's
sim engine. A slow model (8 tokens/s) makes streaming and waiting observable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

import mm
from mm import keys, registry
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

SLOW = sim_model("sim-slow:1b", load_bandwidth=4 * GB, eval_rate=8, parallel=2)
FAST = sim_model("sim-fast:1b", load_bandwidth=4 * GB, eval_rate=2_000, parallel=4)
MEMORY = 3 * GB
CLI = [sys.executable, "-c", "from mm.cli import main; main()"]
UNROUNDED = re.compile(r"\d\.\d{3,}\s?s\b")  # 72.29679465293884s


@pytest.fixture
def node(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [SLOW, FAST], MEMORY) as stack:
        yield stack


class Running:
    """The CLI as a child process whose stdout and stderr are read as they come."""

    def __init__(self, *args: str):
        self.popen = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                      env=os.environ.copy())
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self._readers = [threading.Thread(target=self._read, args=(pipe, into), daemon=True)
                         for pipe, into in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, into: list[bytes]) -> None:
        while chunk := pipe.read(256):
            into.append(chunk)

    def stdout(self) -> str:
        return b"".join(self.out).decode()

    def stderr(self) -> str:
        return b"".join(self.err).decode()

    def job_id(self) -> str:
        match = re.search(r"job (\S+) sent to", self.stderr())
        return match.group(1) if match else ""

    def finish(self, timeout: float = 60) -> int:
        try:
            code = self.popen.wait(timeout)
        finally:
            self.popen.kill()
            for reader in self._readers:
                reader.join(5)
        return code


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_wait_shows_the_state_then_the_tokens_while_the_job_still_runs(node):
    cli = Running("enqueue", SLOW["name"], "tell me about queues", "--wait", "--num-predict", "24")

    job_id = wait_for(cli.job_id, 30, what=f"the job id on stderr ({cli.stderr()!r})")
    wait_for(cli.stdout, 30, what="the first tokens on stdout")
    status_at_first_token = mm.Job(job_id).status()
    code = cli.finish()

    assert code == 0, cli.stderr()
    assert status_at_first_token == "running", "tokens came only after the job ended"
    assert cli.stdout() == mm.Job(job_id).get(timeout=10)["response"] + "\n"
    lines = cli.stderr().splitlines()
    running = [i for i, line in enumerate(lines) if "running on node n1" in line]
    complete = [i for i, line in enumerate(lines) if "complete on node n1: 24 tokens" in line]
    assert running and complete and running[0] < complete[0], lines


def test_no_stream_prints_the_whole_output_at_the_end_and_streams_nothing(node):
    done = run_cli("enqueue", SLOW["name"], "hello", "--wait", "--no-stream", "--num-predict", "8")

    assert done.returncode == 0, done.stderr
    job_id = re.search(r"job (\S+) sent to", done.stderr).group(1)
    assert done.stdout == mm.Job(job_id).get(timeout=10)["response"] + "\n"
    assert not node.r.exists(keys.job_stream(job_id))
    assert "running on node n1" in done.stderr


def test_a_job_still_running_when_the_cli_stops_waiting_is_reported_as_still_running(node):
    mm.submit(SLOW["name"], "load it", options={"num_predict": 1}).get(timeout=30)  # resident: runs at once

    done = run_cli("enqueue", SLOW["name"], "a long story", "--wait", "--num-predict", "40", "--timeout", "2")

    job_id = re.search(r"job (\S+) sent to", done.stderr).group(1)
    assert done.returncode == 3, done.stderr
    assert f"still running {job_id}" in done.stderr and f"mm jobs status {job_id}" in done.stderr
    assert "failed 1" not in done.stderr and f"failed {job_id}" not in done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert not UNROUNDED.search(done.stderr), done.stderr
    wait_for(lambda: mm.Job(job_id).status() == "complete", 30, what="the job to go on and complete")


def test_ctrl_c_stops_the_waiting_not_the_job(node):
    cli = Running("enqueue", SLOW["name"], "a long story", "--wait", "--num-predict", "40")
    wait_for(lambda: "running on node n1" in cli.stderr(), 30, what=f"the job to run ({cli.stderr()!r})")
    job_id = cli.job_id()

    cli.popen.send_signal(signal.SIGINT)
    code = cli.finish()

    assert code == 130, cli.stderr()
    assert f"still running {job_id}" in cli.stderr() and f"mm jobs status {job_id}" in cli.stderr()
    assert "Traceback" not in cli.stderr() and "Exception ignored" not in cli.stderr(), cli.stderr()
    wait_for(lambda: mm.Job(job_id).status() == "complete", 30, what="the job to go on and complete")


@pytest.mark.parametrize("mode", [["--batch"], ["--random", "3", "--seed", "1"]])
def test_test_modes_ask_for_64_tokens_by_default(node, mode):
    done = run_cli("enqueue", FAST["name"], *mode)

    assert done.returncode == 0, done.stderr
    job_ids = [key.decode().removeprefix(keys.job("")) for key in node.r.scan_iter(keys.job("*"))]
    assert len(job_ids) == (4 if mode[0] == "--batch" else 3)
    assert {mm.Job(job_id).get(timeout=10)["timings"]["eval_tokens"] for job_id in job_ids} == {64}


def test_the_default_stays_within_a_model_ceiling_set_lower(node):
    registry.set_flags(node.r, FAST["name"], max_num_predict=16)

    done = run_cli("enqueue", FAST["name"], "hello", "--wait")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.splitlines()[-2])["eval_tokens"] == 16


def test_a_client_that_stops_waiting_exits_cleanly_with_a_rounded_duration(node):
    script = (
        "import mm\n"
        f"job = mm.submit({SLOW['name']!r}, 'slow', options={{'num_predict': 24}})\n"
        "try:\n"
        "    job.get(timeout=0.5)\n"
        "except TimeoutError as exc:\n"
        "    print(exc)\n"
    )

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "did not end within 0.5 s" in done.stdout, done.stdout
    assert "Exception ignored" not in done.stderr, done.stderr


def _heartbeats(node, count: int) -> None:
    seen: set[float] = set()

    def published() -> bool:
        state = node.node_state()
        if state:
            seen.add(state["at"])
        return len(seen) >= count

    wait_for(published, 30, interval=0.05, what=f"{count} node heartbeats")


def test_the_runtime_poll_is_logged_at_debug_in_the_broker_and_the_runtime(node):
    _heartbeats(node, 6)  # each one read /api/ps from the runtime
    mm.submit(FAST["name"], "still logged", options={"num_predict": 4}).get(timeout=30)

    broker_log = node.procs["broker"].output()
    runtime_log = node.runtime.output()
    assert "/api/ps" not in broker_log, broker_log[-2000:]
    assert "GET /api/ps" not in runtime_log, runtime_log[-2000:]
    assert "POST /api/generate 200" in runtime_log  # requests that do something stay at INFO
    assert "LOAD sim-fast:1b on n1" in broker_log
