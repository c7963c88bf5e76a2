"""Fixtures every test may use; each room's own fixtures live in tests/fixtures/<room>.py."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.swarm",
    "tests.fixtures.ledger",
    "tests.fixtures.chain",
    "tests.fixtures.gateway",
    "tests.fixtures.deploy",
    "tests.fixtures.workers",
    "tests.fixtures.system",
    "tests.fixtures.portal",
    "tests.fixtures.verifier",
]
