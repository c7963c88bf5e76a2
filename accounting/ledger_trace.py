"""The ledger write as a span of each request's trace: one `ledger.write` span per traced record of a batch.

A batch holds records of many traces, so each traced record gets a span of its own, child of the worker run
its usage record names, covering the batch's write from its first attempt to its commit.
"""

from collections.abc import Sequence

import telemetry
from accounting.batch_writer import BatchOutcome
from protocol.usage import UsageRecord


def trace_batch(records: Sequence[UsageRecord], outcome: BatchOutcome, started_ns: int, committed_ns: int) -> None:
    """Record each traced record's ledger write; does nothing while tracing is off."""
    if not telemetry.enabled():
        return
    for record in records:
        if record.trace_parent is None:
            continue
        span = telemetry.start_span(
            "ledger.write",
            parent=record.trace_parent,
            start_ns=started_ns,
            attributes={
                "far.request_id": record.request_id,
                "far.model_id": record.model_id,
                "far.tokens": record.tokens_generated,
                "far.nodes": len(record.contributions),
                "far.batch_size": len(records),
                "far.session_written": record.request_id in outcome.written,
            },
        )
        telemetry.end_span(span, end_ns=committed_ns)
