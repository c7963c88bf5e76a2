"""One request's life at the gateway, as an operator sees it: its trace's root span and its end-to-end latency.

The root span (`gateway.request`) starts when the request is admitted and ends when its final event has been
sent (or it was refused, or the client left); the job carries its traceparent, so the worker's and the
ledger's spans join the same trace. The end-to-end latency histogram is observed at the same moment, for
requests whose job this submission enqueued and whose final event was sent. With tracing off, only the
admission time is kept.
"""

import time

import telemetry
from gateway.metrics import GatewayMetrics


class RequestTrace:
    """Started by `submission.submit`; `relay_started` and `ended` are called by whoever streams the answer."""

    def __init__(self) -> None:
        self.admitted_at = time.monotonic()
        self.root: telemetry.Span = telemetry.start_span("gateway.request", root=True)
        self.model_id = ""
        self.new_job = False
        """This submission enqueued the job (a re-attach is not a request's whole life)."""
        self._relay: telemetry.Span | None = None
        self._ended = False

    def traceparent(self) -> str | None:
        return telemetry.traceparent_of(self.root)

    def admitted(self, request_id: str, model_id: str, *, new_job: bool) -> None:
        self.model_id, self.new_job = model_id, new_job
        if telemetry.enabled():
            self.root.set_attributes({"far.request_id": request_id, "far.model_id": model_id, "far.new_job": new_job})

    def refused(self, exc: BaseException) -> None:
        """The request was not admitted (4xx, 503...): the root span ends as an error naming the exception type."""
        if not self._ended:
            self._ended = True
            telemetry.end_span(self.root, error=type(exc).__name__)

    def relay_started(self) -> None:
        if telemetry.enabled():
            self._relay = telemetry.start_span("gateway.relay", parent=self.root)

    def ended(self, metrics: GatewayMetrics, *, finished: bool, client_left: bool) -> None:
        """The answer is over: observe the latency when the final event was sent, and end the spans."""
        if self._ended:
            return
        self._ended = True
        if finished and self.new_job:
            metrics.request_duration.labels(self.model_id).observe(time.monotonic() - self.admitted_at)
        if telemetry.enabled():
            attributes = {"far.finished": finished, "far.client_left": client_left}
            if self._relay is not None:
                telemetry.end_span(self._relay, attributes=attributes)
            telemetry.end_span(self.root, attributes=attributes)
