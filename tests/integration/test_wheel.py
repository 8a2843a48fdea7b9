"""The built wheel, installed as a client (no extras) into a fresh venv beside a project that has its
own ``celeryconfig.py``, ``workers/`` and ``beat/``: mm claims only the ``mm`` name, never reads the
project's Celery config, and a job the project submits runs on a real mm node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.stack import REPO, sim_node
from tests.support import GB, sim_model

MODEL = sim_model("wheel:1b", load_bandwidth=10 * GB, eval_rate=2000)
SERVER_MODULES = ("ollama", "tornado", "flower", "prometheus_client", "pynvml", "httpx", "llama_cpp")
# A project's own Celery config: what mm must not pick up.
PROJECT_CONFIG = 'broker_url = "amqp://guest@nowhere//"\ntask_acks_late = False\n'
# Run by the fresh venv's python from the project's directory, as the project's own code would be.
PROJECT_SCRIPT = '''
import json, sys

import mm
from mm.app import app

mm_conf = {"broker_url": app.conf.broker_url, "acks_late": app.conf.task_acks_late}
read_project_config = "celeryconfig" in sys.modules
job = mm.submit(sys.argv[1], "hello from another project", options={"num_predict": 4})
response = job.get(timeout=60)["response"]
loaded = sorted(name for name in %r if name in sys.modules)

import celeryconfig, workers, beat
from celery import Celery

project_app = Celery("project", config_source="celeryconfig")
print(json.dumps({
    "mm_file": mm.__file__, "mm_conf": mm_conf, "read_project_config": read_project_config,
    "response": response, "server_modules_loaded": loaded,
    "own": {m.__name__: m.__file__ for m in (celeryconfig, workers, beat)},
    "project_conf": {"broker_url": project_app.conf.broker_url, "acks_late": project_app.conf.task_acks_late},
}))
''' % (SERVER_MODULES,)  # noqa: UP031  (a format string would need every brace of the script doubled)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``args`` to completion (5 minutes at most); fail with its output if it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the working tree (a stale build/ there cannot leak in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".mm-run", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(source)])
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def client_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) holding the wheel and its base dependencies only."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    # This venv's pip installs into the other one, so the fresh venv needs no pip of its own; the
    # dependencies come from pip's cache when this machine installed them before.
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--disable-pip-version-check", str(wheel)])
    return venv


def make_project(root: Path) -> Path:
    """A project with its own ``celeryconfig.py`` and ``workers`` and ``beat`` packages."""
    root.mkdir()
    (root / "celeryconfig.py").write_text(PROJECT_CONFIG)
    for package in ("workers", "beat"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(f'"""The project\'s own {package}."""\n')
    (root / "use_mm.py").write_text(PROJECT_SCRIPT)
    return root


def client_env(redis_url: str) -> dict[str, str]:
    """The environment of a process outside the repository: mm's Redis, no path into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"MM_REDIS_URL": redis_url}


def test_the_wheel_holds_only_mm_with_every_package_and_needs_only_the_client_dependencies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    base = {req.name for req in requires if req.marker is None}
    extras = {e for req in requires if req.marker for e in ("server", "llama", "test")
              if req.marker.evaluate({"extra": e})}
    packages = {str(p.parent.relative_to(REPO)) for d in ("mm", "workers", "beat")
                for p in (REPO / d).rglob("__init__.py")}

    assert metadata["Name"] == "mm-llm-scheduler"
    assert {name for name in top if not name.endswith(".dist-info")} == {"mm"}
    assert {"mm/celeryconfig.py", "mm/workers/node_tasks.py", "mm/beat/tasks.py", "mm/py.typed"} <= set(names)
    for package in packages:  # workers/x and beat/x go in as mm/workers/x and mm/beat/x
        installed = package if package.startswith("mm") else f"mm/{package}"
        assert f"{installed}/__init__.py" in names, package
    static = {f"mm/{p.relative_to(REPO / 'mm')}" for p in (REPO / "mm" / "gateway" / "static").iterdir()}
    assert static <= set(names)
    assert base == {"celery", "redis", "click"}
    assert extras == {"server", "llama", "test"}
    assert "requests" not in {req.name for req in requires}
    assert "pynvml" not in {req.name for req in requires} and "nvidia-ml-py" in {req.name for req in requires}


def test_a_project_keeps_its_own_celeryconfig_workers_and_beat_and_its_job_runs_on_mm(
        tmp_path, redis_url, client_venv):
    project = make_project(tmp_path / "project")

    with sim_node(tmp_path, redis_url, [MODEL], 4 * GB):
        done = run([str(client_venv / "bin" / "python"), "use_mm.py", MODEL["name"]], cwd=project,
                   env=client_env(redis_url))

    seen = json.loads(done.stdout.splitlines()[-1])
    assert Path(seen["mm_file"]).is_relative_to(client_venv)  # the wheel's mm, not the checkout's
    assert seen["mm_conf"] == {"broker_url": redis_url, "acks_late": True}
    assert not seen["read_project_config"]
    assert seen["response"]
    assert seen["server_modules_loaded"] == []
    assert seen["own"] == {"celeryconfig": str(project / "celeryconfig.py"),
                           "workers": str(project / "workers" / "__init__.py"),
                           "beat": str(project / "beat" / "__init__.py")}
    assert seen["project_conf"] == {"broker_url": "amqp://guest@nowhere//", "acks_late": False}


def test_a_client_install_has_no_server_dependencies_and_server_commands_name_the_extra(
        tmp_path, redis_url, client_venv):
    python = str(client_venv / "bin" / "python")
    env = client_env(redis_url)

    find = f"import importlib.util as u; print([m for m in {SERVER_MODULES!r} if u.find_spec(m)])"
    present = run([python, "-c", find], cwd=tmp_path, env=env)
    client_commands = run([str(client_venv / "bin" / "mm"), "--help"], cwd=tmp_path, env=env)
    gateway = subprocess.run([str(client_venv / "bin" / "mm"), "gateway"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=60)

    assert present.stdout.strip() == "[]"
    assert "enqueue" in client_commands.stdout and "jobs" in client_commands.stdout
    assert gateway.returncode == 1
    assert "pip install 'mm-llm-scheduler[server]'" in gateway.stderr
