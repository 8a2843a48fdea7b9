"""Security: JSON only (a pickled message is refused), passwords never logged, wrong credentials fail closed."""

from __future__ import annotations

import os
import subprocess
import sys

import mm
from mm import keys
from mm.app import INFER_TASK, app
from tests.procs import wait_for
from tests.stack import sim_node
from tests.support import GB, REDIS_PASSWORD, sim_model

MODEL = sim_model("secure:1b", load_bandwidth=10 * GB, eval_rate=2000)
OPTS = {"num_predict": 4}
PASSWORD = REDIS_PASSWORD


def test_a_pickled_message_injected_into_a_model_queue_is_refused(tmp_path, redis_url):
    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB) as stack:
        assert mm.generate(MODEL["name"], "bind the worker", options=OPTS, timeout=60)

        evil = app.send_task(INFER_TASK, kwargs={"request": {"model": MODEL["name"], "kind": "generate",
                                                             "prompt": "pwned"}, "submitted_at": 0},
                             queue=keys.model_queue(MODEL["name"]), serializer="pickle")
        wait_for(lambda: "untrusted content" in stack.procs["w1"].output(), 30, what="the worker to refuse pickle")

        assert evil.state == "PENDING" and not stack.r.exists(keys.job(evil.id))
        assert stack.procs["w1"].alive()
        assert mm.generate(MODEL["name"], "still serving", options=OPTS, timeout=60)["response"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_no_log_line_carries_the_redis_password(tmp_path, password_redis):
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_redis}/0"
    with sim_node(tmp_path, url, [MODEL], 4 * GB) as stack:
        done = cli(os.environ | {"MM_REDIS_URL": url}, "enqueue", MODEL["name"], "hello", "--wait")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "LOAD secure:1b" in stack.procs["broker"].output(), 10)
    logs = [p.read_text(errors="replace") for p in tmp_path.glob("*.log")] + [done.stdout, done.stderr]
    assert all(PASSWORD not in text for text in logs)


def test_wrong_credentials_fail_closed_with_an_explicit_error(password_redis):
    url = f"redis://:wrong-password@127.0.0.1:{password_redis}/0"

    done = cli(os.environ | {"MM_REDIS_URL": url}, "enqueue", "any:1b", "hello")

    assert done.returncode != 0
    assert "refused the credentials" in done.stderr and "invalid username-password" in done.stderr
    assert "wrong-password" not in done.stderr
