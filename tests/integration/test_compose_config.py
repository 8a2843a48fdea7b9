"""docker-compose itself accepts docker-compose.yml (the rules in it are checked as data in
tests/unit/test_compose.py)."""

import os
import subprocess
from pathlib import Path

from tests.support import require_binary

REPO = Path(__file__).resolve().parents[2]


def test_docker_compose_config_accepts_the_file():
    binary = require_binary("docker-compose")
    env = os.environ | {"REDIS_PASSWORD": "p", "FLOWER_AUTH": "u:p", "MM_GATEWAY_API_KEYS": "k"}

    done = subprocess.run([binary, "config", "-q"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
