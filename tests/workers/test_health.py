"""The worker's /healthz: healthy only while its event loop beats and every Petals client has the DHT."""

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from probes import serve_health_and_metrics
from workers.health import FleetHealth


class Client:
    def __init__(self) -> None:
        self.alive = True

    def connected(self) -> bool:
        return self.alive


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_event_loop_and_a_disconnected_client_each_make_the_worker_unhealthy() -> None:
    clock, client = Clock(), Client()
    health = FleetHealth({"far-tiny": client}, stale_after_s=10, clock=clock)
    assert health.check() == []

    clock.now += 11
    assert health.check() == ["event loop silent for 11.0 s"]
    health.beat()
    client.alive = False
    assert health.check() == ["client of far-tiny is not connected to the DHT"]


@pytest.fixture
def served_health() -> Iterator[tuple[str, Client]]:
    client = Client()
    registry = CollectorRegistry()
    Counter("far_mesh_worker_probe_test", "a metric the endpoint must still serve", registry=registry).inc()
    server = serve_health_and_metrics(FleetHealth({"far-tiny": client}).check, 0, host="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{server.server_port}", client
    server.shutdown()
    server.server_close()


def test_healthz_answers_503_with_the_reasons_and_metrics_are_served_beside_it(
    served_health: tuple[str, Client],
) -> None:
    url, client = served_health
    ok = httpx.get(f"{url}/healthz", timeout=5)
    assert ok.status_code == 200 and ok.json() == {"healthy": True, "problems": []}

    client.alive = False
    down = httpx.get(f"{url}/healthz", timeout=5)
    assert down.status_code == 503 and down.json()["problems"] == ["client of far-tiny is not connected to the DHT"]
    metrics = httpx.get(f"{url}/metrics", timeout=5)
    assert metrics.status_code == 200 and "far_mesh_worker_probe_test_total 1.0" in metrics.text
