"""How `make test` splits the suite over two processes (pytest-xdist, `-n 2 --dist loadgroup`).

The costly things tests share are session fixtures that start processes (a local swarm, the whole e2e system):
each xdist process would start its own copy. So every test that uses one joins that fixture's group and runs in
one process, which starts it once; every other test stays with its module, so a module's fixtures start once.

The shared-fixture groups are queued first (they are the longest units of work): each process starts with one
of them, and the modules fill in around them, instead of one process finishing both after the other is idle.
"""

import os

import pytest

SHARED_PROCESS_FIXTURES = ("two_server_swarm", "e2e_system", "smollm2_swarm")
"""Session fixtures that start processes many tests share, longest-running group first."""


def group_of(item: pytest.Item) -> str:
    """The fixture group `item` belongs to, else its module's path."""
    for fixture in SHARED_PROCESS_FIXTURES:
        if fixture in getattr(item, "fixturenames", ()):
            return fixture
    return item.nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {item.nodeid: group_of(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {fixture: index for index, fixture in enumerate(SHARED_PROCESS_FIXTURES)}
        items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))  # stable: order within a group kept
