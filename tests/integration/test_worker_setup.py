"""A Celery process started the wrong way for its mm role stops at start, saying why and how to
start it, and `mm check` reports it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.procs import Proc, wait_for
from tests.stack import REPO


def celery_worker(tmp_path, redis_url: str, name: str, *args: str, **env: str) -> Proc:
    environ = os.environ | {"MM_REDIS_URL": redis_url, "MM_NODE": "n1", "MM_USE_NVML": "0",
                            "MM_RUNTIME_URL": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)} | env
    return Proc([sys.executable, "-m", "celery", "-A", "mm.app", "worker", "-l", "INFO", "--without-gossip",
                 "--without-mingle", "-n", f"{name}@n1", *args], log=tmp_path / f"{name}.log", env=environ,
                cwd=str(REPO))


@pytest.mark.parametrize("name, args, env, says", [
    ("broker", ["-Q", "mm.node.n1,mm.beat", "-c", "1"], {},
     "must run on Celery's threads pool (-P threads), not prefork"),
    ("broker", ["-Q", "mm.node.n1,mm.beat", "-c", "2", "-P", "threads"], {}, "one command at a time (-c 1)"),
    ("broker", ["-Q", "mm.node.n2", "-c", "1", "-P", "threads"], {}, "consumes mm.node.n2 but MM_NODE is 'n1'"),
    ("model-1", ["-P", "threads", "-c", "3"], {"MM_WORKER_SLOTS": "4"}, "-c 3 but MM_WORKER_SLOTS is 4"),
    ("model-1", ["-P", "threads", "-c", "4", "-Q", "mm.model.sim-a:1b"], {},
     "must not consume model queues by hand (mm.model.sim-a:1b)"),
])
def test_a_misconfigured_worker_stops_at_start_naming_the_setting_and_mm_check_says_so(
        tmp_path, redis_url, name, args, env, says):
    proc = celery_worker(tmp_path, redis_url, name, *args, **env)
    try:
        wait_for(lambda: not proc.alive(), 60, what=f"{name} to stop")
    finally:
        proc.stop()

    assert proc.popen.returncode != 0
    assert says in proc.output() and "start it as: celery -A mm.app worker" in proc.output()
    check = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "check"], capture_output=True,
                           text=True, timeout=60, env=os.environ | {"MM_REDIS_URL": redis_url})
    assert check.returncode == 1 and f"{name}@n1 refused to start" in check.stderr and says in check.stderr
