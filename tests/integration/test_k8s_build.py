"""``kubectl kustomize`` builds deploy/k8s's base and overlays into exactly the objects that
tests/unit/test_k8s.py checks (its ``build`` is kustomize's build as those kustomizations use it).

kubectl is no Debian package, so a machine without it skips this test, CI included; the unit tests
check the same objects without it.
"""

import shutil
import subprocess

import pytest
import yaml

from tests.unit.test_k8s import TARGETS, build


def _key(obj):
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kubectl_kustomize_builds_the_objects_the_unit_tests_check(target):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)")

    done = subprocess.run([kubectl, "kustomize", str(TARGETS[target])], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    built = {_key(o): o for o in yaml.safe_load_all(done.stdout) if o}
    assert built == {_key(o): o for o in build(TARGETS[target])}
