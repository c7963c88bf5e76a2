"""A buyer's routing preferences are validated once, in protocol/, for both APIs and the job (#30 item 2)."""

from decimal import Decimal

import pytest
from pydantic import ValidationError

from protocol.jobs import GenerateJob
from protocol.provider_preferences import ProviderPreferences
from protocol.requests import GenerateRequest
from tests.fixtures.workers import PRICE_FAR

PEER_A = "12D3KooWAbCdEfGhJkLmNpQrStUvWxYz123456789abcdefghijk"
WALLET_LOWER = "0x" + "ab" * 20
WALLET_CHECKSUM = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


def _refusal(data: object) -> str:
    with pytest.raises(ValidationError) as caught:
        ProviderPreferences.model_validate(data)
    return str(caught.value)


def test_an_unknown_sort_is_refused_naming_the_sorts_there_are() -> None:
    message = _refusal({"sort": "cheapest"})
    assert "sort" in message and "'price', 'throughput' or 'latency'" in message


def test_a_server_named_in_both_only_and_ignore_is_refused_by_name_whatever_the_wallets_letter_case() -> None:
    message = _refusal({"only": [WALLET_LOWER, PEER_A], "ignore": [WALLET_LOWER.upper().replace("0X", "0x")]})
    assert f"{WALLET_CHECKSUM} is named in both only and ignore" in message


@pytest.mark.parametrize("price", ["-0.1", -1, 0.001, "1e-3", "0.0000000000000000001"])
def test_a_max_price_that_is_negative_a_json_number_or_not_a_plain_decimal_string_is_refused(price: object) -> None:
    message = _refusal({"max_price": {"completion": price}})
    assert "max_price.completion" in message
    assert ("cannot be negative" in message) == str(price).startswith("-")


@pytest.mark.parametrize(
    "data",
    [
        {"only": []},
        {"only": ["not a peer"]},
        {"ignore": ["0x1234"]},
        {"min_reputation": 1.5},
        {"min_reputation": "0.5"},
        {"allow_fallbacks": "no"},
        {"order": ["a"]},
    ],
)
def test_malformed_preferences_are_refused(data: object) -> None:
    _refusal(data)


def test_wallets_are_normalised_to_eip55_and_peer_ids_kept_as_given() -> None:
    prefs = ProviderPreferences.model_validate({"only": [WALLET_LOWER, PEER_A]})
    assert prefs.only == [WALLET_CHECKSUM, PEER_A]


def test_a_quote_above_max_price_names_the_price_and_the_cap_and_one_at_it_passes() -> None:
    prefs = ProviderPreferences.model_validate({"max_price": {"prompt": "0.00002", "completion": "0.0003"}})
    assert prefs.price_refusal(Decimal("0.00002"), Decimal("0.0003")) is None
    field, message = prefs.price_refusal(Decimal("0.00002"), Decimal("0.00031")) or ("", "")
    assert field == "provider.max_price.completion"
    assert "0.00031 $FAR per token" in message and "(0.0003)" in message


def test_only_max_price_leaves_routing_alone_and_the_label_names_what_shapes_routes() -> None:
    assert not ProviderPreferences.model_validate({"max_price": {"prompt": "1"}}).shapes_routes
    assert not ProviderPreferences().shapes_routes
    prefs = ProviderPreferences.model_validate(
        {"sort": "throughput", "ignore": [PEER_A], "min_reputation": 0.5, "allow_fallbacks": False}
    )
    assert prefs.shapes_routes
    assert prefs.label() == "sort-throughput,ignore:1,min-rep:0.5,no-fallbacks"


def test_the_request_carries_preferences_to_the_job_and_a_job_without_them_keeps_its_old_payload() -> None:
    request = GenerateRequest.model_validate({"prompt": "hi", "provider": {"ignore": [PEER_A], "sort": "latency"}})
    values = {
        "request_id": "r1",
        "model_id": "m",
        "prompt": "hi",
        "max_tokens": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "price_per_token_far": PRICE_FAR,
        "enqueued_at": 0.0,
    }
    job = GenerateJob(**values, provider=request.provider)
    assert GenerateJob.model_validate(job.payload()).provider == request.provider
    assert "provider" not in GenerateJob(**values).payload()
