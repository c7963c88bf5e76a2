"""A process's own health, told to Kubernetes: a heartbeat its loop beats, and `/healthz` beside `/metrics`.

A room of its own, importing only the standard library and prometheus_client, because three processes
(the worker, the accounting consumer, the verifier) serve the same probe and none of them may import another.
`protocol` could not hold it (it is the processes' contract, not their plumbing: the README's rooms), and
`telemetry` is tracing, which pulls in the OpenTelemetry SDK that a health probe must not need.
"""

from probes.health_server import HEALTH_PATH, Heartbeat, health_and_metrics_app, serve_health_and_metrics

__all__ = ["HEALTH_PATH", "Heartbeat", "health_and_metrics_app", "serve_health_and_metrics"]
