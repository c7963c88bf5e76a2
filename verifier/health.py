"""The verifier's `/healthz` (its loop's heartbeat) and Prometheus `/metrics`, served from a daemon thread."""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

SPANS_VERIFIED = Counter("far_verifier_spans_total", "Server spans recomputed", ["model_id", "verdict"])
SLASHED_ROWS = Counter("far_verifier_slashed_contributions_total", "Contribution rows slashed")
BANS = Counter("far_verifier_bans_total", "Nodes banned from routing")
NODE_REPUTATION = Gauge(
    "far_verifier_node_reputation", "Reputation in [0, 1] of each node the verifier has judged", ["node_id"]
)
VERIFY_SECONDS = Histogram("far_verifier_check_seconds", "Recompute time of one sampled session")
TOKENS_VERIFIED = Counter("far_verifier_tokens_total", "Positions recomputed (tokens x spans)", ["model_id"])


class Heartbeat:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last <= self.stale_after_s


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes arrive every few seconds; an access line each would drown the lifecycle lines."""


def serve_health(heartbeat: Heartbeat, port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve `/healthz` and `/metrics` on `port`; `shutdown()` the result to stop."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        status = "200 OK" if heartbeat.alive() else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [status.encode() + b"\n"]

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="verifier-health", daemon=True).start()
    log.info("health and metrics served port=%d paths=/healthz,/metrics", server.server_port)
    return server
