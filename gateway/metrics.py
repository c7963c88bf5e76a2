"""Prometheus metrics of one gateway process: requests by route and status, streams open, relay and end-to-end
latency.

Each app gets its own registry, so several apps in one process (tests, benchmarks) never collide.
"""

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "far_gateway_requests",
            "HTTP requests answered, by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "far_gateway_active_streams", "SSE streams this process is relaying", registry=self.registry
        )
        self.relay_latency = BatchHistogram(
            "far_gateway_relay_latency_seconds",
            "Delay from a worker's XADD to the relay reading the entry",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "far_gateway_request_duration_seconds",
            "End-to-end latency: from a request's admission to its final event sent to the client",
            ["model_id"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
            registry=self.registry,
        )

    def stream_opened(self, delta: int) -> None:
        self.active_streams.inc(delta)

    def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class BatchHistogram:
    """A histogram observed a batch at a time, for the relay's per-token delays.

    prometheus_client's `Histogram` takes two locks and scans its buckets in Python per observation, which
    showed in the relay's profile at thousands of tokens a second; the gateway's event loop is its only writer,
    so plain counters and `bisect` do.
    """

    def __init__(self, name: str, documentation: str, *, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one counts what exceeds every bound
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self._counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = list(accumulate(self._counts))
        labels = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(labels, cumulative, strict=True)), sum_value=self._sum
        )


class RequestMetricsMiddleware:
    """Counts each response by its route template (never the raw path, which would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route: BaseRoute | None = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.metrics.requests.labels(template, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_counting)
