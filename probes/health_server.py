"""`/healthz` and the Prometheus metrics served from a daemon thread, judged by a check the process supplies.

The server runs in its own thread so that the verdict stays honest while the event loop is blocked: the loop's
`Heartbeat` simply stops being beaten, the check sees it, and `/healthz` answers 503 with the reasons, so
Kubernetes restarts a process whose loop has stopped turning. Every other path serves the metrics.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Check = Callable[[], list[str]]
"""What is wrong with the process now; an empty list when it is healthy."""


class Heartbeat:
    """When a loop last showed it was turning (monotonic seconds): beaten by the loop, read by the server thread."""

    def __init__(self, stale_after_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()  # one float store: safe to read from the server thread

    def age_s(self) -> float:
        return self._clock() - self._last

    def alive(self) -> bool:
        return self.age_s() <= self.stale_after_s

    def problems(self) -> list[str]:
        """The check of a process whose only sign of life is this heartbeat."""
        age = self.age_s()
        return [] if age <= self.stale_after_s else [f"event loop silent for {age:.1f} s"]


def health_and_metrics_app(check: Check, registry: CollectorRegistry = REGISTRY) -> WsgiApp:
    """`/healthz`: 200 `{"healthy": true, "problems": []}`, or 503 with the problems; any other path: metrics."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        problems = check()
        body = json.dumps({"healthy": not problems, "problems": problems}).encode()
        status = "200 OK" if not problems else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes arrive every few seconds: one access line each would drown the lifecycle lines."""


def serve_health_and_metrics(
    check: Check,
    port: int,
    *,
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
    thread_name: str = "health",
) -> WSGIServer:
    """Serve `/healthz` and the metrics on `port` from a daemon thread; `shutdown()` and `server_close()` the result
    to stop."""
    app = health_and_metrics_app(check, registry)
    server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()
    log.info("health and metrics served port=%d paths=%s,/metrics", server.server_port, HEALTH_PATH)
    return server
