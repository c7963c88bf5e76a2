"""One run's spans: its queue wait, the run, each session's route, prefill and decode, and its ending.

The spans join the gateway's trace through the job's `trace_parent`; the usage record carries the run span's
traceparent on to accounting. Decoding is one span per session (per failover attempt) with its token count,
never a span per token. With tracing off, `RunTrace.claimed` returns `NO_TRACE`, whose every method returns
at its first line.
"""

import time

import telemetry
from protocol.jobs import GenerateJob


class RunTrace:
    def __init__(self, job: GenerateJob | None = None, *, job_try: int = 1, worker_id: str = "") -> None:
        self.on = job is not None and telemetry.enabled()
        self.run: telemetry.Span | None = None
        self._session: telemetry.Span | None = None
        self._step: telemetry.Span | None = None
        self._prefilling = False
        self._decoded = 0
        if not self.on or job is None:
            return
        if job_try == 1:  # a retried job's wait since enqueue includes its earlier runs
            waited = telemetry.start_span("queue.wait", parent=job.trace_parent, start_ns=int(job.enqueued_at * 1e9))
            telemetry.end_span(waited, attributes={"far.request_id": job.request_id, "far.model_id": job.model_id})
        self.run = telemetry.start_span(
            "worker.run",
            parent=job.trace_parent,
            attributes={
                "far.request_id": job.request_id,
                "far.model_id": job.model_id,
                "far.job_try": job_try,
                "far.worker_id": worker_id,
            },
        )

    @classmethod
    def claimed(cls, job: GenerateJob, *, job_try: int, worker_id: str) -> "RunTrace":
        """The trace of a run that just claimed `job` (its queue wait ends now); `NO_TRACE` when tracing is off."""
        return cls(job, job_try=job_try, worker_id=worker_id) if telemetry.enabled() else NO_TRACE

    def traceparent(self) -> str | None:
        """The run span's traceparent, for the usage record; None when off."""
        return telemetry.traceparent_of(self.run) if self.run is not None else None

    def session_opening(self, failovers: int) -> None:
        if self.on:
            self._session = telemetry.start_span(
                "worker.open_session", parent=self.run, attributes={"far.failovers": failovers}
            )

    def session_opened(self) -> None:
        """The route is open: its first step is the prefill."""
        if self.on:
            self._end_session_span()
            self._step, self._prefilling, self._decoded = (
                telemetry.start_span("worker.prefill", parent=self.run),
                True,
                0,
            )

    def stepped(self) -> None:
        """A step returned a token: the prefill ends with the first, the session's decode span counts the rest."""
        if not self.on:
            return
        if self._prefilling:
            self._end_step()
            self._step, self._prefilling = telemetry.start_span("worker.decode", parent=self.run), False
        else:
            self._decoded += 1

    def step_failed(self, exc: BaseException) -> None:
        """The route broke (a failover follows, or the run gives up): the step's span ends as an error."""
        if self.on:
            self._end_step(error=type(exc).__name__)

    def session_closed(self) -> None:
        if self.on:
            self._end_session_span()
            self._end_step()

    def finish_started(self) -> None:
        if self.on:
            self._step = telemetry.start_span("worker.finish", parent=self.run)

    def finish_done(self, written: str) -> None:
        if self.on and self._step is not None:
            telemetry.end_span(self._step, attributes={"far.written": written})
            self._step = None

    def ended(self, status: str, *, tokens: int, nodes: int, failovers: int) -> None:
        if self.on and self.run is not None:
            telemetry.end_span(
                self.run,
                attributes={"far.status": status, "far.tokens": tokens, "far.nodes": nodes, "far.failovers": failovers},
            )
            self.run = None

    def close(self) -> None:
        """End whatever is still open (the run raised); idempotent."""
        if self.on:
            self.session_closed()
            if self.run is not None:
                telemetry.end_span(self.run, error="run raised")
                self.run = None

    def _end_session_span(self) -> None:
        if self._session is not None:
            telemetry.end_span(self._session)
            self._session = None

    def _end_step(self, error: str | None = None) -> None:
        if self._step is None:
            return
        attributes = None if self._prefilling else {"far.tokens": self._decoded}
        telemetry.end_span(self._step, error=error, attributes=attributes)
        self._step, self._prefilling = None, False


NO_TRACE = RunTrace()
"""The trace of every run while tracing is off: `on` is False, so nothing is recorded."""


def queue_wait_s(job: GenerateJob) -> float:
    """Seconds from the gateway's enqueue to now (0 when the clocks disagree the other way)."""
    return max(0.0, time.time() - job.enqueued_at)
