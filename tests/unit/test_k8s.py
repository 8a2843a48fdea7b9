"""deploy/k8s carries mm's deployment rules for Kubernetes, checked as data: every object valid against
Kubernetes 1.30's schemas, every command one the docs document, every MM_* variable a real setting.

No cluster here: ``build`` is kustomize's build for what these kustomizations use (resources,
namespace, strategic-merge patches that delete an object or set fields), and
tests/integration/test_k8s_build.py checks that ``kubectl kustomize`` builds the same objects.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mm import redis_url
from mm.settings import Settings
from tests.deploy_rules import REPO, command_problem, load_yaml_documents, unknown_settings

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
TARGETS = {p.relative_to(K8S).as_posix(): p for p in KUSTOMIZATIONS}
KUBERNETES = "1.30.0"
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
MM_IMAGE = "mm:latest"
EMULATED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge of maps; a list in the patch replaces the list (what these patches need)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` builds (for the kustomization fields these use)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= EMULATED_FIELDS, set(kustomization) - EMULATED_FIELDS
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += build(path) if path.is_dir() else load_yaml_documents(path)
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, patch_entry
        for patch in load_yaml_documents(directory / patch_entry["path"]):
            index = next(i for i, o in enumerate(objects) if _ident(o) == _ident(patch))
            if patch.get("$patch") == "delete":
                del objects[index]
            else:
                objects[index] = _merge(objects[index], patch)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _ident(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A workload's containers and its init containers (the native sidecars among them)."""
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(target: str) -> list[dict[str, Any]]:
    return [o for o in build(TARGETS[target]) if o["kind"] in WORKLOADS]


def named(target: str, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in build(TARGETS[target]) if _ident(o) == (kind, name))


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(obj) if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def probe_commands(c: dict[str, Any]) -> list[list[str]]:
    probes = [c.get(p) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    return [p["exec"]["command"] for p in probes if p and "exec" in p]


def mm_containers(target: str) -> list[dict[str, Any]]:
    return [c for w in workloads(target) for c in containers(w) if c["image"] == MM_IMAGE]


def test_there_is_a_base_and_the_sentinel_and_cpu_overlays():
    assert {"base", "overlays/sentinel", "overlays/cpu"} <= set(TARGETS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_file_a_kustomization_names_exists(target):
    kustomization = yaml.safe_load((TARGETS[target] / "kustomization.yaml").read_text())
    named_files = [*kustomization.get("resources", []), *(p["path"] for p in kustomization.get("patches", []))]

    assert named_files and all((TARGETS[target] / f).exists() for f in named_files), named_files


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_object_is_valid_against_the_kubernetes_schema(target):
    for obj in build(TARGETS[target]):
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_command_and_probe_is_a_documented_mm_or_celery_command(target):
    commands = [argv for c in mm_containers(target) for argv in [c["command"], *probe_commands(c)]]

    assert [problem for argv in commands if (problem := command_problem(argv))] == []
    assert all(c["command"][0] in ("celery", "mm") and "args" not in c for c in mm_containers(target))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_mm_variable_is_a_setting_and_every_reference_is_defined_first(target):
    for c in (c for w in workloads(target) for c in containers(w)):
        names = [e["name"] for e in c.get("env", [])]
        assert unknown_settings(names) == [], c["name"]
        for text in [*c.get("command", []), *c.get("args", [])]:
            for ref in re.findall(r"\$\(([A-Z_]+)\)", text):  # Kubernetes expands $(VAR) from env only
                assert ref in names, (c["name"], ref)
        for i, e in enumerate(c.get("env", [])):
            assert set(re.findall(r"\$\(([A-Z_]+)\)", e.get("value", ""))) <= set(names[:i]), (c["name"], e)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_container_requests_resources_and_is_probed(target):
    for c in (c for w in workloads(target) for c in containers(w)):
        assert c["resources"]["requests"], c["name"]
        assert "livenessProbe" in c and {"readinessProbe", "startupProbe"} & set(c), c["name"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_mm_process_reads_redis_from_the_secret(target):
    for c in mm_containers(target):
        if "MM_REDIS_URL" in env(c):
            assert env(c)["MM_REDIS_URL"] == {"secretKeyRef": {"name": "mm-redis", "key": "url"}}
    assert all("MM_REDIS_URL" in env(c) for c in mm_containers(target) if c["command"][0] == "celery")


def test_redis_persists_its_aof_and_takes_its_password_from_a_secret():
    redis = named("base", "StatefulSet", "mm-redis")
    command = " ".join(container(redis, "redis")["command"])

    assert "--appendonly yes" in command and "noeviction" in command and "--requirepass $(REDIS_PASSWORD)" in command
    assert env(container(redis, "redis"))["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "mm-redis", "key": "password"}}
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_a_gpu_host_runs_ollama_broker_and_model_workers_in_one_pod_named_by_its_node():
    node = named("base", "DaemonSet", "mm-gpu-node")
    spec = pod_spec(node)
    mm = [c for c in containers(node) if c["image"] == MM_IMAGE]

    assert spec["nodeSelector"] == {"mm.dev/gpu": "true"}
    assert container(node, "ollama")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(container(node, "ollama"))["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert all(env(c)["MM_NODE"] == {"fieldRef": {"fieldPath": "spec.nodeName"}} for c in mm)
    assert all(env(c)["MM_RUNTIME_URL"] == "http://127.0.0.1:11434" for c in mm)
    assert "mm.node.$(MM_NODE),mm.beat" in container(node, "gpu-broker")["command"]


@pytest.mark.parametrize("target", ["base", "overlays/cpu"])
def test_the_runtime_and_broker_are_sidecars_that_outlive_the_jobs_of_the_model_workers(target):
    node = next(w for w in workloads(target) if any(c["name"] == "gpu-broker" for c in containers(w)))
    spec = pod_spec(node)

    assert [c.get("restartPolicy") for c in spec["initContainers"]] == ["Always", "Always"]
    assert spec["initContainers"][1]["name"] == "gpu-broker"
    assert all(c["command"][:4] == ["celery", "-A", "mm.app", "worker"] for c in spec["containers"])
    assert spec["terminationGracePeriodSeconds"] >= Settings().job_time_limit_s


def test_no_service_exposes_the_runtime():
    for target in TARGETS:
        services = [o for o in build(TARGETS[target]) if o["kind"] == "Service"]
        assert 11434 not in [p["port"] for s in services for p in s["spec"].get("ports", [])], target


def test_the_cpu_overlay_runs_the_embedded_runtime_and_asks_for_no_gpu():
    objects = build(TARGETS["overlays/cpu"])
    node = named("overlays/cpu", "StatefulSet", "mm-node")

    assert "nvidia" not in yaml.safe_dump(objects)
    assert container(node, "runtime")["command"][:2] == ["mm", "runtime"]
    assert env(container(node, "gpu-broker"))["MM_NODE"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_two_beats_run_and_the_gateway_keeps_one_pod_through_disruptions():
    gateway = named("base", "Deployment", "mm-gateway")
    pdb = named("base", "PodDisruptionBudget", "mm-gateway")

    assert named("base", "Deployment", "mm-beat")["spec"]["replicas"] == 2
    assert pdb["spec"]["selector"] == gateway["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < gateway["spec"]["replicas"]


def test_the_gateway_needs_api_keys_and_drains_within_its_grace_period():
    gateway = named("base", "Deployment", "mm-gateway")
    c = container(gateway, "gateway")
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][1])

    assert env(c)["MM_GATEWAY_API_KEYS"] == {"secretKeyRef": {"name": "mm-gateway", "key": "api-keys"}}
    assert {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]} == {"/api/health", "/health"}
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > pause + 5  # + mm/serving.py's CLOSE_TIMEOUT_S


def test_flower_needs_basic_auth_from_a_secret_and_has_no_outside_service():
    flower = named("base", "Deployment", "mm-flower")
    c = container(flower, "flower")

    assert "--basic-auth=$(FLOWER_AUTH)" in c["command"]
    assert env(c)["FLOWER_AUTH"] == {"secretKeyRef": {"name": "mm-flower", "key": "auth"}}
    assert named("base", "Service", "mm-flower")["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_the_sentinel_overlay_replaces_the_one_redis_with_two_nodes_and_three_sentinels():
    objects = {_ident(o): o for o in build(TARGETS["overlays/sentinel"])}
    script = objects["ConfigMap", "mm-redis-sentinel"]["data"]["sentinel.sh"]

    assert ("StatefulSet", "mm-redis") not in objects
    assert objects["StatefulSet", "mm-redis-node"]["spec"]["replicas"] == 2
    assert objects["StatefulSet", "mm-sentinel"]["spec"]["replicas"] == 3
    assert "sentinel monitor mymaster ${primary:-mm-redis-node-0.mm-redis-node} 6379 2" in script


def test_the_sentinel_url_docs_kubernetes_md_gives_is_one_mm_parses():
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    url = re.search(r'url="(sentinel://[^"]+)"', doc).group(1).replace("$PASSWORD", "p")

    parsed = redis_url.parse(url)

    assert parsed.master_name == "mymaster" and parsed.password == "p" and parsed.sentinel_password == "p"
    assert [host for host, _ in parsed.sentinels] == [f"mm-sentinel-{i}.mm-sentinel" for i in range(3)]
