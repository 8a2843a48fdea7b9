"""The test tiers: every collected test has exactly one, the unit tier asks for no service, and a missing
tool skips a test outside CI only."""

import pytest

from tests.conftest import COLLECTED, TIERS
from tests.support import require_binary

SERVICE_FIXTURES = {"redis_server", "redis_url"}


def test_every_collected_test_has_exactly_one_tier_marker(pytestconfig):
    collected = pytestconfig.stash[COLLECTED]

    untiered = {nodeid: tiers for nodeid, (tiers, _) in collected.items() if len(tiers) != 1}

    assert collected and not untiered, f"tests without exactly one of {sorted(TIERS)}: {untiered}"


def test_no_unit_test_uses_a_service_fixture(pytestconfig):
    collected = pytestconfig.stash[COLLECTED]

    served = {nodeid: sorted(SERVICE_FIXTURES & set(fixtures))
              for nodeid, (tiers, fixtures) in collected.items()
              if tiers == ["unit"] and SERVICE_FIXTURES & set(fixtures)}

    assert not served, f"unit tests that start services (move them to tests/integration): {served}"


def test_a_missing_binary_skips_the_test_with_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y mm-no-such-package"):
        require_binary("mm-no-such-command", "mm-no-such-package")


def test_a_missing_binary_fails_the_test_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match=r"mm-no-such-command is not installed"):
        require_binary("mm-no-such-command")


def test_a_binary_on_path_is_found(monkeypatch, tmp_path):
    tool = tmp_path / "mm-test-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert require_binary("mm-test-tool") == str(tool)
