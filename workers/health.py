"""The worker pod's health: what `/healthz` (served by `probes`, beside `/metrics`) checks for Kubernetes' probes.

A worker can be wedged while its metrics still answer (they are served from their own thread): its event
loop blocked, or a Petals client cut off from the DHT so no session finds a route. `/healthz` answers 200
only while the loop keeps beating and every served model's client is connected, else 503 with the reasons.
"""

import time
from collections.abc import Callable, Mapping
from typing import Protocol

from probes import Heartbeat

HEARTBEAT_INTERVAL_S = 1.0
STALE_AFTER_S = 10.0
"""A loop silent this long is wedged: leases (seconds) have long lapsed and its jobs moved elsewhere."""


class Connectable(Protocol):
    def connected(self) -> bool: ...


class FleetHealth:
    """Fed by the event loop (`beat`), read by the HTTP thread (`check`)."""

    def __init__(
        self,
        served: Mapping[str, Connectable],
        *,
        stale_after_s: float = STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._served = served
        self._heartbeat = Heartbeat(stale_after_s, clock=clock)

    def beat(self) -> None:
        self._heartbeat.beat()

    def check(self) -> list[str]:
        """What is wrong with this worker now; empty when it is healthy."""
        problems = self._heartbeat.problems()
        for model_id, model in self._served.items():
            try:
                connected = model.connected()
            except Exception as exc:  # a half-built or closing client: not connected either
                connected, model_id = False, f"{model_id} ({exc!r})"
            if not connected:
                problems.append(f"client of {model_id} is not connected to the DHT")
        return problems
