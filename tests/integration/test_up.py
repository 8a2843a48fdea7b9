"""`mm up --demo`: the README's first command brings everything up, runs the demo and stops it all."""

import os
import sys

import pytest
import redis

from tests.procs import Proc, free_port, wait_for

pytestmark = pytest.mark.llama


def test_mm_up_runs_the_demo_batch_with_real_text_and_stops_everything(tmp_path):
    port = free_port()
    env = os.environ | {
        "MM_REDIS_URL": f"redis://127.0.0.1:{port}/0",  # nothing answers: mm up starts redis-server
        "MM_RUNTIME_URL": f"http://127.0.0.1:{free_port()}",  # no Ollama there: the embedded runtime
        "MM_NODE": "demo-node",
    }
    up = Proc([sys.executable, "-c", "from mm.cli import main; main()", "up", "--demo", "--exit", "--no-flower",
               "--workers", "1", "--run-dir", str(tmp_path / "run")], log=tmp_path / "up.log", env=env,
              cwd=str(tmp_path))
    try:
        wait_for(lambda: not up.alive(), timeout=400, interval=0.5, what="mm up --demo --exit to finish")
        out = up.output()
        assert up.popen.returncode == 0, out
        assert "demo: 3 jobs to gemma3:270m" in out
        assert out.count(" tok/s, waited ") == 3, out
    finally:
        up.stop()
    # Every child was stopped with it: the redis-server it started no longer answers.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()
