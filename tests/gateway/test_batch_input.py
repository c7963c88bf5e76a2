"""A batch input file checked line by line (no I/O): what runs, and every reason a line fails the batch."""

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from gateway.batch_api import discounted
from gateway.batch_input import parse_input
from gateway.batch_store import line_request_id
from gateway.settings import GatewaySettings
from protocol.live_prices import Prices
from protocol.requests import REQUEST_ID_PATTERN
from tests.fixtures.gateway import GATEWAY_ENV, MODEL_ID

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture
def settings() -> GatewaySettings:
    env = {k.lower(): v for k, v in GATEWAY_ENV.items()}
    return GatewaySettings.from_env(**env, postgres_url="postgresql://u@localhost/db", gateway_batch_max_lines=5)


def line(custom_id: str = "a", url: str = CHAT, **body: Any) -> str:
    if url == CHAT:
        request = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **body}
    else:
        request = {"model": MODEL_ID, "prompt": "hi", **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": request})


def codes(text: str, settings: GatewaySettings, endpoint: str = CHAT) -> list[tuple[int, str, str | None]]:
    return [(e.line, e.code, e.param) for e in parse_input(text, endpoint, settings).errors]


def test_valid_lines_become_the_requests_their_endpoint_would_run(settings: GatewaySettings) -> None:
    parsed = parse_input(f"{line('a', max_tokens=3)}\n\n{line('b', temperature=0.5)}\n", CHAT, settings)
    assert parsed.errors == []
    assert [v.custom_id for v in parsed.lines] == ["a", "b"]
    first = parsed.lines[0].prepared
    assert first.chat and first.generate.max_tokens == 3 and first.turns is not None
    assert parsed.lines[1].prepared.generate.temperature == 0.5
    completion = parse_input(line("c", COMPLETIONS, logprobs=2), COMPLETIONS, settings).lines[0].prepared
    assert not completion.chat and completion.generate.prompt == "hi" and completion.generate.top_logprobs == 2


def test_lines_end_at_newlines_alone_so_a_json_string_may_hold_unicode_line_separators(
    settings: GatewaySettings,
) -> None:
    separated = line("a", messages=[{"role": "user", "content": "one\u2028two\u2029three\u0085four"}])
    text = json.dumps(json.loads(separated), ensure_ascii=False) + "\r\n" + line("b") + "\n"
    parsed = parse_input(text, CHAT, settings)
    assert parsed.errors == [] and [valid.custom_id for valid in parsed.lines] == ["a", "b"]


def test_every_bad_line_is_named_with_its_number_and_cause(settings: GatewaySettings) -> None:
    text = "\n".join(
        [
            "{not json",
            json.dumps({"custom_id": "x", "url": CHAT, "body": {}}),  # no method
            line("c", COMPLETIONS),
            line("d", "/v1/embeddings"),
            line("e", model="nobody/none"),
        ]
    )
    assert codes(text, settings) == [
        (1, "invalid_json_line", None),
        (2, "invalid_request", "method"),
        (3, "invalid_url", "url"),
        (4, "invalid_url", "url"),
        (5, "model_not_found", "body.model"),
    ]


def test_a_body_is_held_to_the_endpoints_own_rules(settings: GatewaySettings) -> None:
    text = "\n".join(
        [
            line("a", stream=True),
            line("b", max_tokens=0),
            line("c", COMPLETIONS, echo=True),
            line("d", tool_choice="auto"),
            line("a"),
        ]
    )
    found = codes(text, settings, CHAT)
    assert found[0] == (1, "invalid_request", "body.stream")
    assert found[1][:2] == (2, "invalid_request") and found[1][2] == "body.max_tokens"
    assert found[2][:2] == (3, "invalid_url")  # a completions line in a chat batch
    assert found[3][:2] == (4, "validation_error") and found[3][2] == "body.tool_choice"
    assert found[4] == (5, "duplicate_custom_id", "custom_id")
    refused = codes(line("c", COMPLETIONS, echo=True), settings, COMPLETIONS)
    assert refused == [(1, "unsupported_parameter", "body.echo")]


def test_size_and_count_limits(settings: GatewaySettings) -> None:
    big = line("big", messages=[{"role": "user", "content": "x" * settings.gateway_max_body_bytes}])
    assert codes(big, settings) == [(1, "line_too_large", None)]
    six = "\n".join(line(str(i)) for i in range(6))
    assert codes(six, settings) == [(6, "too_many_requests", None)]
    assert codes("\n \n", settings) == [(1, "empty_file", None)]


def test_a_lines_request_id_is_fixed_by_its_batch_and_index() -> None:
    batch_id = "batch_" + "f" * 32
    ids = [line_request_id(batch_id, i) for i in (0, 1, 49_999)]
    assert ids == [line_request_id(batch_id, i) for i in (0, 1, 49_999)] and len(set(ids)) == 3
    assert all(re.match(REQUEST_ID_PATTERN, i) for i in ids)


def test_the_discount_rounds_each_price_down_to_the_ledgers_decimals() -> None:
    prices = Prices(
        prompt_price_per_token_far=Decimal("0.000000000000000003"), completion_price_per_token_far=Decimal("0.0003")
    )
    half = discounted(prices, 5000)
    assert half.prompt_price_per_token_far == Decimal("0.000000000000000001")
    assert half.completion_price_per_token_far == Decimal("0.00015")
    assert discounted(prices, 0) == prices
