"""The consumer's liveness: a heartbeat its loop beats, served as `/healthz` beside `/metrics`.

Redis cannot tell a stuck consumer from an idle one (XINFO's idle time is not reset by empty blocking reads),
so the process keeps its own heartbeat: the loop beats after every iteration, empty or not, and on every
deliberate wait for the ledger. `/healthz` answers 503 once the last beat is older than
ACCOUNTING_LIVENESS_S, so Kubernetes restarts a consumer whose loop has stopped turning. The server runs in
its own thread: metrics stay readable, and the verdict stays honest, even while the event loop is blocked.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
StartResponse = Callable[..., Any]


class Heartbeat:
    """When the consumer loop last showed it was turning (monotonic seconds)."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()  # one float store: safe to read from the server thread

    def age_s(self) -> float:
        return time.monotonic() - self._last

    def alive(self) -> bool:
        return self.age_s() <= self.stale_after_s


def health_app(heartbeat: Heartbeat) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app: `/healthz` judges the heartbeat, every other path serves the Prometheus metrics."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        age = heartbeat.age_s()
        if heartbeat.alive():
            status, body = "200 OK", f"ok: last loop iteration {age:.1f}s ago\n"
        else:
            status = "503 Service Unavailable"
            body = f"stale: no loop iteration for {age:.1f}s (limit {heartbeat.stale_after_s:.0f}s)\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes arrive every few seconds: one access line each would drown the lifecycle lines."""


def serve_health(heartbeat: Heartbeat, port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve `/healthz` and `/metrics` on `port` from a daemon thread; `shutdown()` the result to stop."""
    server = make_server(host, port, health_app(heartbeat), _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="accounting-health", daemon=True).start()
    log.info("health and metrics served port=%d paths=%s,/metrics", server.server_port, HEALTH_PATH)
    return server
