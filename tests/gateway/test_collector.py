"""The gateway's garbage-collector settings (gateway/collector.py): start-up objects frozen, young collections rarer."""

import gc
from collections.abc import Iterator

import pytest

from gateway import collector


class StartUp:
    """Something the gateway made before it started serving."""


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_young_collections_come_less_often() -> None:
    _, middle, old = gc.get_threshold()
    start_up = StartUp()
    collector.tune_for_streams()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
    assert all(tracked is not start_up for tracked in gc.get_objects())  # frozen: collections never walk it
