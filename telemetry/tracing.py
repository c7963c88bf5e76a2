"""The process's tracer: off (the default) costs a global lookup per span; on, spans go to OTLP or a file.

`FAR_MESH_TRACING` picks where finished spans go:

- `off`: no tracer is built and no SDK is imported; `span()` hands back one shared no-op context manager and
  `traceparent_of()` answers None, so a job or usage record carries nothing but a None field.
- `otlp`: OTLP over HTTP, configured by OpenTelemetry's own variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
  `OTEL_BSP_SCHEDULE_DELAY`, ...), exported in batches by a background thread.
- `file:DIR`: each process appends its spans as JSON lines to `DIR/<service>.<pid>.jsonl` (tests, and a look at
  one machine without a collector); batched the same way.

A span's parent crosses processes as a W3C `traceparent` string (in the arq job and in the usage record).
"""

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Status, StatusCode, Tracer
from opentelemetry.trace import Span as Span  # re-exported: the rooms hold spans without importing OpenTelemetry
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACING_OFF: Final = "off"
TRACING_PATTERN: Final = r"^(off|otlp|file:.+)$"
"""What FAR_MESH_TRACING accepts (`protocol.settings` validates it with this same pattern)."""

Parent = Span | str | None
"""A span's parent: a span of this process, a W3C traceparent from another one, or None for the current span."""
Attributes = Mapping[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: Final[AbstractContextManager[Span]] = nullcontext(INVALID_SPAN)
"""What `span()` returns while tracing is off: one shared object, entered and left for free."""


@dataclass(frozen=True)
class TracingTarget:
    """Where finished spans go (FAR_MESH_TRACING)."""

    kind: Literal["off", "otlp", "file"]
    directory: Path | None = None


def parse_target(value: str) -> TracingTarget:
    """`off`, `otlp` or `file:DIR`; anything else raises ValueError saying what is accepted."""
    value = value.strip()
    if value in ("", TRACING_OFF):
        return TracingTarget("off")
    if value == "otlp":
        return TracingTarget("otlp")
    if value.startswith("file:") and value[5:]:
        return TracingTarget("file", Path(value[5:]))
    raise ValueError(f"FAR_MESH_TRACING: {value!r} is not off, otlp or file:DIR")


_tracer: Tracer | None = None
_provider: "TracerProvider | None" = None


def configure(target: str | TracingTarget, service_name: str) -> None:
    """Build this process's tracer for `target` (once, at start-up); `off` leaves tracing off.

    `service_name` names the process in its spans unless OTEL_SERVICE_NAME says otherwise.
    """
    global _tracer, _provider
    if isinstance(target, str):
        target = parse_target(target)
    reset()
    if target.kind == "off":
        return
    # The SDK and its exporter are imported only when tracing is on: an untraced process never loads them.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter: SpanExporter
    if target.kind == "file":
        from telemetry.json_lines import JsonLinesSpanExporter

        assert target.directory is not None
        target.directory.mkdir(parents=True, exist_ok=True)
        exporter = JsonLinesSpanExporter(target.directory / f"{service_name}.{os.getpid()}.jsonl")
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("far-mesh")


def reset() -> None:
    """Export what is pending and turn tracing off (process exit does this too; tests call it)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def flush(timeout_ms: int = 5000) -> None:
    """Export every span finished so far (before a process hands over, or before a test reads the file)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def span(
    name: str, *, parent: Parent = None, attributes: Attributes | None = None, start_ns: int | None = None
) -> AbstractContextManager[Span]:
    """A span around a `with` block (the current span inside it); exceptions are recorded on it as errors."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, context=_context(parent), attributes=attributes, start_time=start_ns)


def start_span(
    name: str,
    *,
    parent: Parent = None,
    root: bool = False,
    attributes: Attributes | None = None,
    start_ns: int | None = None,
) -> Span:
    """A span the caller ends (`span.end(end_time=...)`); `root` starts a new trace. A no-op span when off."""
    tracer = _tracer
    if tracer is None:
        return INVALID_SPAN
    context = Context() if root else _context(parent)
    return tracer.start_span(name, context=context, attributes=attributes, start_time=start_ns)


def traceparent_of(of: Span | None = None) -> str | None:
    """The W3C traceparent of `of` (the current span when None), for another process; None when off."""
    if _tracer is None:
        return None
    context = trace.set_span_in_context(of) if of is not None else None
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """The context a traceparent names (None: none was sent, so the current one applies)."""
    if traceparent is None:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def _context(parent: Parent) -> Context | None:
    if parent is None:
        return None
    if isinstance(parent, str):
        return context_of(parent)
    return trace.set_span_in_context(parent)


def end_span(
    of: Span, *, error: str | None = None, attributes: Attributes | None = None, end_ns: int | None = None
) -> None:
    """End a span from `start_span`, marked an error (`error` says which kind, never a message) when given."""
    if _tracer is None:
        return
    if attributes:
        of.set_attributes(attributes)
    if error is not None:
        of.set_status(Status(StatusCode.ERROR, error))
    of.end(end_time=end_ns)
