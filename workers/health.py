"""The worker pod's health, served as `/healthz` beside `/metrics` for Kubernetes' probes.

A worker can be wedged while its metrics still answer (they are served from their own thread): its event
loop blocked, or a Petals client cut off from the DHT so no session finds a route. `/healthz` answers 200
only while the loop keeps beating and every served model's client is connected, else 503 with the reasons.
"""

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HEARTBEAT_INTERVAL_S = 1.0
STALE_AFTER_S = 10.0
"""A loop silent this long is wedged: leases (seconds) have long lapsed and its jobs moved elsewhere."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


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
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._last_beat = clock()

    def beat(self) -> None:
        self._last_beat = self._clock()

    def check(self) -> list[str]:
        """What is wrong with this worker now; empty when it is healthy."""
        problems = []
        silent_s = self._clock() - self._last_beat
        if silent_s > self._stale_after_s:
            problems.append(f"event loop silent for {silent_s:.1f} s")
        for model_id, model in self._served.items():
            try:
                connected = model.connected()
            except Exception as exc:  # a half-built or closing client: not connected either
                connected, model_id = False, f"{model_id} ({exc!r})"
            if not connected:
                problems.append(f"client of {model_id} is not connected to the DHT")
        return problems


def health_and_metrics_app(health: FleetHealth, registry: CollectorRegistry) -> WsgiApp:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        problems = health.check()
        body = json.dumps({"healthy": not problems, "problems": problems}).encode()
        status = "200 OK" if not problems else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def serve_health_and_metrics(host: str, port: int, health: FleetHealth, registry: CollectorRegistry) -> WSGIServer:
    """Serve `/healthz` and the metrics (every other path) from a daemon thread; `.shutdown()` stops it."""
    server = make_server(
        host, port, health_and_metrics_app(health, registry), _ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server
