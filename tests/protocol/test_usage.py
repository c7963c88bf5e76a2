"""A usage record balances on its own, or it is refused before it reaches the ledger."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.usage import MAX_COUNT, NodeContribution, UsageRecord

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def record(**changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": "req_1",
        "model_id": "tiny",
        "status": "completed",
        "finish_reason": "length",
        "prompt_tokens": 4,
        "tokens_generated": 3,
        "price_per_token_far": Decimal("0.0001"),
        "total_cost_far": Decimal("0.0003"),
        "platform_remainder_far": Decimal("0.0001"),
        "started_at": START,
        "finished_at": START + timedelta(seconds=1),
        "worker_id": "w1",
        "contributions": (
            NodeContribution(
                node_id="peerA", blocks_served=2, tokens_contributed=7, work_units=14, payment_far=Decimal("0.0001")
            ),
            NodeContribution(
                node_id="peerB", blocks_served=2, tokens_contributed=7, work_units=14, payment_far=Decimal("0.0001")
            ),
        ),
    }
    return UsageRecord(**(fields | changes))


def test_a_balanced_record_round_trips_through_the_usage_stream_fields() -> None:
    original = record()
    fields = original.to_stream_fields()
    assert UsageRecord.from_stream_fields(fields) == original
    assert UsageRecord.from_stream_fields({k.encode(): v.encode() for k, v in fields.items()}) == original


def test_a_cost_that_is_not_tokens_times_price_is_refused() -> None:
    with pytest.raises(ValidationError, match="tokens_generated x price"):
        record(total_cost_far=Decimal("0.0004"))


def test_payments_that_do_not_add_up_to_the_cost_are_refused() -> None:
    with pytest.raises(ValidationError, match="payments .* remainder"):
        record(platform_remainder_far=Decimal("0"))


@pytest.mark.parametrize("field", ["tokens_contributed", "work_units", "blocks_served"])
def test_a_contribution_claiming_more_than_any_session_does_is_refused(field: str) -> None:
    """Stored, a claim of 2**63 - 1 tokens would overflow every later daily sum naming its node."""
    honest = record().contributions[0]
    with pytest.raises(ValidationError, match="less than or equal"):
        NodeContribution(**(honest.model_dump() | {field: 2**63 - 1}))
    assert NodeContribution(**(honest.model_dump() | {field: MAX_COUNT})).model_dump()[field] == MAX_COUNT


def test_a_node_listed_twice_is_refused() -> None:
    twice = record().contributions[0]
    with pytest.raises(ValidationError, match="once"):
        record(contributions=(twice, twice), platform_remainder_far=Decimal("0.0001"))


def test_naive_timestamps_are_refused_so_every_time_is_unambiguous() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        record(started_at=datetime(2026, 11, 23, 12, 0))


def test_an_entry_without_the_record_field_is_refused() -> None:
    with pytest.raises(ValueError, match="'record'"):
        UsageRecord.from_stream_fields({"other": "x"})


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_an_untraced_record_leaves_the_trace_field_out_so_an_older_consumer_still_parses_it() -> None:
    fields = record().to_stream_fields()
    assert "trace_parent" not in fields["record"]
    assert UsageRecord.from_stream_fields(fields).trace_parent is None


def test_a_traced_record_carries_its_traceparent_to_accounting() -> None:
    traced = record(trace_parent=TRACEPARENT)
    assert UsageRecord.from_stream_fields(traced.to_stream_fields()) == traced
