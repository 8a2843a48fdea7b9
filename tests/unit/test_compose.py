"""docker-compose.yml carries the deployment rules (no Docker engine here, so the file is checked as data)."""

import re
import shlex
from pathlib import Path

import yaml

from tests.deploy_rules import command_problem, unknown_settings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_process_of_mm_is_a_service():
    assert {"redis", "ollama", "gpu-broker", "model-worker", "beat", "flower", "gateway"} <= set(SERVICES)


def test_redis_has_aof_a_password_and_noeviction():
    command = SERVICES["redis"]["command"]
    assert "--appendonly yes" in command and "--requirepass" in command and "noeviction" in command


def test_mm_services_reach_redis_with_the_password_and_ollama_by_service_name():
    env = SERVICES["gpu-broker"]["environment"]
    assert env["MM_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert env["MM_RUNTIME_URL"] == "http://ollama:11434"


def test_the_gpu_is_reserved_for_ollama_and_the_broker_reads_nvml():
    for name in ("ollama", "gpu-broker"):
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_flower_needs_basic_auth_and_listens_on_loopback_only():
    assert "--basic-auth=" in SERVICES["flower"]["command"]
    assert all(port.startswith("127.0.0.1:") for port in SERVICES["flower"]["ports"])


def test_the_gateway_requires_api_keys_and_ollama_is_not_published():
    assert "MM_GATEWAY_API_KEYS" in SERVICES["gateway"]["environment"]
    assert "ports" not in SERVICES["ollama"]


def test_model_workers_scale_and_the_broker_consumes_its_node_and_beat_queues():
    assert SERVICES["model-worker"]["deploy"]["replicas"] >= 1
    assert "-Q mm.node." in SERVICES["gpu-broker"]["command"] and "mm.beat" in SERVICES["gpu-broker"]["command"]


def test_every_service_has_a_healthcheck():
    assert all("healthcheck" in service for service in SERVICES.values()), [
        name for name, service in SERVICES.items() if "healthcheck" not in service]


def test_the_image_installs_mm_with_its_server_extra_and_no_top_level_celeryconfig():
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY"))

    assert "'.[server]'" in install
    assert all(f" {d} " in copied for d in ("mm", "workers", "beat"))
    assert "celeryconfig.py" not in copied  # mm reads mm.celeryconfig; the top-level one is for clients


def test_every_mm_service_runs_the_mm_celery_app():
    for name in ("gpu-broker", "model-worker", "beat", "flower"):
        assert SERVICES[name]["command"].startswith("celery -A mm.app "), name


def _interpolated(text):
    """The text as docker-compose runs it: ${VAR:-default} gives the default, any other ${VAR...} a value."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\$?\{?[A-Z_]+(:\?[^}]*)?\}?", "x", text)


def _healthcheck_argv(service):
    test = service["healthcheck"]["test"]
    return ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]


def test_every_command_and_healthcheck_is_a_documented_mm_or_celery_command():
    mm_services = [s for s in SERVICES.values() if s.get("image") == "mm:latest"]
    commands = [shlex.split(_interpolated(s["command"])) for s in mm_services]
    checks = [[_interpolated(word) for word in _healthcheck_argv(s)] for s in mm_services]

    assert [problem for argv in commands + checks if (problem := command_problem(argv))] == []
    assert {argv[0] for argv in commands} == {"celery", "mm"}


def test_every_mm_variable_is_a_setting():
    names = [name for service in SERVICES.values() for name in service.get("environment", {})]

    assert "MM_REDIS_URL" in names and unknown_settings(names) == []
