"""Traces across the processes: set-up from FAR_MESH_TRACING, spans that cost nothing while tracing is off.

Every process may import this room; it imports none of ours (the W3C `traceparent` strings it reads and
writes travel in `protocol`'s job and usage record as plain strings).
"""

from telemetry.tracing import (
    TRACING_OFF,
    TRACING_PATTERN,
    Span,
    TracingTarget,
    configure,
    context_of,
    enabled,
    end_span,
    flush,
    parse_target,
    reset,
    span,
    start_span,
    traceparent_of,
)

__all__ = [
    "TRACING_OFF",
    "TRACING_PATTERN",
    "TracingTarget",
    "configure",
    "context_of",
    "Span",
    "enabled",
    "end_span",
    "flush",
    "parse_target",
    "reset",
    "span",
    "start_span",
    "traceparent_of",
]
