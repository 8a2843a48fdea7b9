"""docs/redis-ha.md's least-privilege ACL users, applied as written to a real redis-server, run a real stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.procs import Proc, free_port, wait_for
from tests.stack import sim_node
from tests.support import GB, sim_model

REDIS_HA_DOC = Path(__file__).resolve().parents[2] / "docs" / "redis-ha.md"
MODEL = sim_model("acl:1b", load_bandwidth=10 * GB, eval_rate=2000)
# The doc's password placeholders and what the tests put there.
ACL_PASSWORDS = {"MM_PASSWORD": "mm-Pa55", "REPL_PASSWORD": "repl-Pa55", "SENTINEL_USER_PASSWORD": "sentinel-user-Pa55",
                 "ADMIN_PASSWORD": "admin-Pa55"}


def documented_acl() -> dict[str, list[str]]:
    """user -> ACL rules, from the ``ACL SETUSER`` lines of docs/redis-ha.md, passwords filled in."""
    text = REDIS_HA_DOC.read_text()
    assert "# Redis without a single point of failure" in text, f"{REDIS_HA_DOC} lacks its Redis section"
    users = {}
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["ACL", "SETUSER"]:
            users[words[2]] = [f">{ACL_PASSWORDS[w[1:]]}" if w.startswith(">") else w for w in words[3:]]
    assert set(users) == {"mm", "repl", "sentinel", "default"}, users
    return users


def acl_config_lines() -> list[str]:
    """The documented users as redis.conf ``user`` directives."""
    return [" ".join(["user", name, *rules]) for name, rules in documented_acl().items()]


@pytest.fixture
def acl_redis(tmp_path):
    """(port, admin client) of a redis-server whose only users are the documented ones."""
    port = free_port()
    conf = tmp_path / "redis-acl.conf"
    conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", f"dir {tmp_path}", "save \"\"",
                               "appendonly no", "acllog-max-len 1000", *acl_config_lines()]) + "\n")
    proc = Proc([shutil.which("redis-server"), str(conf)], log=tmp_path / "redis-acl.log")
    admin = redis.Redis(port=port, username="default", password=ACL_PASSWORDS["ADMIN_PASSWORD"])
    try:
        wait_for(admin.ping, 15, what=f"redis with the documented ACL ({tmp_path / 'redis-acl.log'})")
        yield port, admin
    finally:
        proc.stop()


def denials(admin: redis.Redis) -> list[tuple]:
    return sorted({(e["username"], e["reason"], e["object"]) for e in admin.acl_log(count=1000)})


def test_a_stack_runs_jobs_streams_and_the_cli_as_the_least_privileged_mm_user(tmp_path, acl_redis):
    port, admin = acl_redis
    url = f"redis://mm:{ACL_PASSWORDS['MM_PASSWORD']}@127.0.0.1:{port}/0"
    env = os.environ | {"MM_REDIS_URL": url}
    with sim_node(tmp_path, url, [MODEL], 4 * GB) as stack:
        cli = [sys.executable, "-c", "from mm.cli import main; main()"]
        done = subprocess.run([*cli, "enqueue", MODEL["name"], "as mm", "--wait", "--num-predict", "5"],
                              capture_output=True, text=True, timeout=120, env=env)
        code = ("import mm; job = mm.submit('acl:1b', 'stream', stream=True, options={'num_predict': 7}); "
                "print(len(list(job.stream(timeout=60))))")
        streamed = subprocess.run([sys.executable, "-c", code],
                                  capture_output=True, text=True, timeout=120, env=env)
        checked = subprocess.run([*cli, "check", "--node", stack.node, "--worker", stack.hostname("w1")],
                                 capture_output=True, text=True, timeout=60, env=env)

        assert done.returncode == 0, done.stderr + stack.logs()
        assert '"eval_tokens": 5' in done.stderr
        assert streamed.returncode == 0 and streamed.stdout.split()[-1] == "8", streamed.stderr
        assert checked.returncode == 0, checked.stderr
    assert denials(admin) == [], "the mm user was refused something mm needs"
    assert admin.keys("mm:job:*") and admin.keys("celery-task-meta-*")


def test_the_mm_user_cannot_run_admin_commands_or_touch_other_keys(acl_redis):
    port, admin = acl_redis
    admin.set("other-app:secret", "x")
    r = redis.Redis(port=port, username="mm", password=ACL_PASSWORDS["MM_PASSWORD"])

    r.set("mm:probe", "ok")

    assert r.get("mm:probe") == b"ok"
    assert r.info("memory")["used_memory"]  # INFO only: mm refuses new jobs before Redis is full
    refused = [lambda: r.get("other-app:secret"), lambda: r.set("session:1", "x"), r.flushall,
               lambda: r.keys("*"), lambda: r.config_get("*"), r.acl_list,
               lambda: r.function_flush(), lambda: r.publish("other-channel", "x"), lambda: r.replicaof("no", "one")]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert admin.get("other-app:secret") == b"x"
