"""What many tests share: byte units, the sim-model builder, and the check for a system binary."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

GB = 1_000_000_000  # a decimal gigabyte: what model files and the runtime's --memory budgets count in
GIB = 1 << 30  # a binary gibibyte


# The password of the ``password_redis`` fixture's server (tests grep logs for it).
REDIS_PASSWORD = "s3cret-Pa55word-for-tests"


def sim_model(name: str, **fields: Any) -> dict[str, Any]:
    """A model object for ``mm runtime --models``: the sim engine, 1 GB, and ``fields`` on top.

    Every other field (``load_bandwidth``, ``prompt_rate``, ``eval_rate``, ``parallel``, ``kind``...)
    is the runtime's default unless ``fields`` sets it, e.g. ``sim_model("a:1b", eval_rate=2000)``.
    """
    return {"name": name, "engine": "sim", "size": GB, **fields}


def in_ci() -> bool:
    """True where the environment says it is CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_binary(name: str, package: str | None = None) -> str:
    """The path of the command ``name``; without it, skip the test, but fail it in CI.

    Args:
        name: the command, looked up on PATH.
        package: the Debian package that installs it (default: ``name``).

    Returns:
        The command's full path.
    """
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (apt-get install -y {package or name})"
    if in_ci():
        pytest.fail(f"{reason}; CI must have every tool the tests use", pytrace=False)
    pytest.skip(reason)
