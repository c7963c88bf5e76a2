"""A request's ending bills what its client was delivered: every token of a stream, none of a failed request
whose client is answered only once it ends (OpenAI without streaming, a Batch API line)."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from mesh.session import ServedSpan
from protocol.events import DoneEvent, ErrorBody, ErrorEvent
from protocol.jobs import GenerateJob
from tests.fixtures.workers import make_job
from workers.attribution import Attribution
from workers.ending import Billing, Outcome, ending_of

PRICE, PROMPT_PRICE = Decimal("0.001"), Decimal("0.0001")
NO_ROUTE = Outcome.failed(ErrorBody(code="no_route", message="no server holds block 2"))


def _job(**fields: Any) -> GenerateJob:
    return make_job("m", "p", price_per_token_far=PRICE, prompt_price_per_token_far=PROMPT_PRICE, **fields)


def _nine_tokens_served() -> Billing:
    attribution = Attribution()
    attribution.record_step([ServedSpan("A", 0, 2), ServedSpan("B", 2, 4)], tokens=5)  # the prefill
    for _ in range(8):
        attribution.record_step([ServedSpan("A", 0, 2), ServedSpan("B", 2, 4)], tokens=1)
    return Billing(prompt_tokens=5, tokens_generated=9, started_at=datetime.now(UTC), attribution=attribution)


def test_a_failed_request_answered_whole_bills_nothing_and_credits_no_node() -> None:
    event, usage = ending_of(_job(answered_whole=True), NO_ROUTE, _nine_tokens_served(), "worker-1")
    assert isinstance(event, ErrorEvent) and event.error.code == "no_route"
    assert event.tokens_generated == usage.tokens_generated == 0
    assert event.total_cost_far == usage.total_cost_far == 0
    assert usage.contributions == () and usage.status == "failed"


def test_a_failed_stream_bills_the_tokens_its_client_received_and_credits_who_served_them() -> None:
    event, usage = ending_of(_job(), NO_ROUTE, _nine_tokens_served(), "worker-1")
    assert event.tokens_generated == usage.tokens_generated == 9
    assert usage.total_cost_far == 5 * PROMPT_PRICE + 9 * PRICE
    assert {c.node_id for c in usage.contributions} == {"A", "B"}


@pytest.mark.parametrize("answered_whole", [True, False])
def test_a_completed_request_bills_every_token_however_it_is_answered(answered_whole: bool) -> None:
    outcome = Outcome("completed", "length")
    event, usage = ending_of(_job(answered_whole=answered_whole), outcome, _nine_tokens_served(), "worker-1")
    assert isinstance(event, DoneEvent) and usage.tokens_generated == 9
    assert usage.total_cost_far == 5 * PROMPT_PRICE + 9 * PRICE


def test_answered_whole_is_left_out_of_the_payload_of_a_streamed_request() -> None:
    assert "answered_whole" not in _job().payload()
    assert _job(answered_whole=True).payload()["answered_whole"] is True
