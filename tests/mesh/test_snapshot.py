import time
from concurrent.futures import Future
from typing import Any

import pytest

from mesh.snapshot import read_swarm_snapshot


class SilentDht:
    """A DHT whose process is gone: a coroutine handed to it is never run, its future never resolved."""

    def run_coroutine(self, coroutine: Any, *, return_future: bool = False) -> "Future[Any]":
        assert return_future, "a blocking call would wait forever"
        return Future()


def test_a_dht_that_never_answers_is_a_timeout_not_a_thread_stuck_forever() -> None:
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        read_swarm_snapshot(SilentDht(), "far-tiny", "far-tiny-prefix", 4, timeout_s=0.2)

    assert time.monotonic() - started < 5
