"""farlabs.provider: a buyer's routing preferences reach the gateway as given, money as decimal strings."""

from decimal import Decimal

from farlabs import ProviderPreferences
from farlabs.provider import provider_json

WALLET = "0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"
PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


def test_every_field_is_sent_as_written_in_the_gateways_routing_docs() -> None:
    provider: ProviderPreferences = {
        "max_price": {"prompt": "0.00002", "completion": "0.0003"},
        "sort": "latency",
        "only": [PEER],
        "ignore": [WALLET],
        "allow_fallbacks": False,
        "min_reputation": 0.5,
    }
    assert provider_json(provider) == provider


def test_a_max_price_given_as_a_decimal_is_sent_as_its_decimal_string_never_a_number() -> None:
    body = provider_json({"max_price": {"prompt": Decimal("2E-5"), "completion": Decimal("0.000300")}})
    assert body == {"max_price": {"prompt": "0.00002", "completion": "0.000300"}}


def test_a_field_this_package_does_not_know_passes_through_for_the_gateway_to_judge() -> None:
    assert provider_json({"order": ["a"], "sort": "cheapest"}) == {"order": ["a"], "sort": "cheapest"}


def test_servers_given_as_a_tuple_are_sent_as_a_list_and_the_callers_object_is_left_alone() -> None:
    provider: ProviderPreferences = {"ignore": (WALLET,), "max_price": {"prompt": Decimal("0.1")}}
    assert provider_json(provider) == {"ignore": [WALLET], "max_price": {"prompt": "0.1"}}
    assert provider == {"ignore": (WALLET,), "max_price": {"prompt": Decimal("0.1")}}
