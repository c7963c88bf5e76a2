"""Token-stream entries: the `data` field is the seed's SSE payload, and every entry decodes back."""

import json
from decimal import Decimal

import pytest

from protocol.events import DoneEvent, ErrorBody, ErrorEvent, MalformedEvent, TokenEvent, decode_event, encode_event

TOKEN = TokenEvent(
    token="Quantum", request_id="req_abc123", index=0, token_id=17, tokens_generated=1, cost_far=Decimal("0.0001")
)


def test_a_token_entry_carries_the_seeds_keys_with_cost_as_a_string() -> None:
    fields = encode_event(TOKEN)
    assert fields["kind"] == "token"
    payload = json.loads(fields["data"])
    assert payload["token"] == "Quantum" and payload["request_id"] == "req_abc123"
    assert payload["tokens_generated"] == 1 and payload["cost_far"] == "0.0001"


def test_the_done_entry_starts_with_the_seeds_done_true() -> None:
    done = DoneEvent(
        request_id="r",
        status="completed",
        finish_reason="stop",
        prompt_tokens=3,
        tokens_generated=2,
        total_cost_far=Decimal("0.0002"),
    )
    payload = json.loads(encode_event(done)["data"])
    assert payload["done"] is True and payload["total_cost_far"] == "0.0002"


@pytest.mark.parametrize(
    "event",
    [
        TOKEN,
        DoneEvent(
            request_id="r",
            status="cancelled",
            finish_reason="cancelled",
            prompt_tokens=1,
            tokens_generated=0,
            total_cost_far=Decimal(0),
        ),
        ErrorEvent(
            error=ErrorBody(code="no_route", message="no server holds blocks 2..3"),
            request_id="r",
            tokens_generated=0,
            total_cost_far=Decimal(0),
        ),
    ],
)
def test_every_event_round_trips_through_redis_shaped_fields(event: TokenEvent | DoneEvent | ErrorEvent) -> None:
    as_bytes = {k.encode(): v.encode() for k, v in encode_event(event).items()}
    assert decode_event(as_bytes) == event
    assert decode_event(encode_event(event)) == event
    assert event.final is not isinstance(event, TokenEvent)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"kind": "token"},
        {"kind": "telemetry", "data": "{}"},
        {"kind": "token", "data": "not json"},
        {"kind": "done", "data": '{"done": true}'},
    ],
)
def test_an_entry_no_event_accepts_is_reported_as_malformed(fields: dict[str, str]) -> None:
    with pytest.raises(MalformedEvent):
        decode_event(fields)
