"""The test tiers: every collected test has exactly one, and the unit tier asks for no service."""

from tests.conftest import COLLECTED, TIERS

SERVICE_FIXTURES = {"redis_server", "redis_url"}


def test_every_collected_test_has_exactly_one_tier_marker(pytestconfig):
    collected = pytestconfig.stash[COLLECTED]

    untiered = {nodeid: tiers for nodeid, (tiers, _) in collected.items() if len(tiers) != 1}

    assert collected and not untiered, f"tests without exactly one of {sorted(TIERS)}: {untiered}"


def test_no_unit_test_uses_a_service_fixture(pytestconfig):
    collected = pytestconfig.stash[COLLECTED]

    served = {nodeid: sorted(SERVICE_FIXTURES & set(fixtures))
              for nodeid, (tiers, fixtures) in collected.items() if tiers == ["unit"] and SERVICE_FIXTURES & set(fixtures)}

    assert not served, f"unit tests that start services (move them to tests/integration): {served}"
