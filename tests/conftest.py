"""Fixtures every test may use; each room's own fixtures live in tests/fixtures/<room>.py.

Global on purpose, not a conftest.py per folder: the expensive fixtures are session-wide and shared across
folders (the e2e system by tests/e2e, tests/sdk, tests/portal and tests/devstack; the two-server swarm by
tests/mesh, tests/workers and tests/portal; Redis and the test database by nearly every folder), and a fixture
made visible to two folders by importing it into two conftests is two fixtures to pytest, each starting its own
system or swarm. pytest takes `pytest_plugins` only here,
at the root. What stays navigable: a fixture named in a test is defined in tests/fixtures/<room>.py for the
room it serves, and a folder's shared helpers are in its helpers.py, never in a test module
(tests/test_layout.py).
"""

import os

import pytest

# One torch thread in every test process and every process the tests start, set before the fixtures import torch.
# The suite runs dozens of processes on two cores, and on the tiny models' tensors a second intra-op thread only
# spins: the tiny model's 120 reference tokens took 5.1 CPU-seconds with two threads, 0.67 with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.fixtures.parallel",
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
    "tests.fixtures.soak",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `restarts_redis` run after every other test, in the order collected, whatever the file names
    (they restart the shared system's Redis, which loses every key: queues, snapshots, the usage group)."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_redis") is not None)
