"""The pricing formula as a pure function: demand and scarcity raise the multiplier, surplus lowers it, the bounds
hold, and the smoothing with its deadband neither flaps nor stops short of the target (docs/pricing.md)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from protocol.catalog import ModelCatalog, ModelSpec
from protocol.live_prices import LIVE_PRICE_MAX_AGE_S, LivePrice, current_prices
from protocol.pricing import PricingPolicy, next_multiplier, scaled_price, scarcity, target_multiplier

POLICY = PricingPolicy()  # the documented defaults: floor 0.5, ceiling 3, 16 jobs, 2 servers per block


def test_an_idle_swarm_served_at_the_target_sells_at_the_catalogue_price() -> None:
    assert target_multiplier(0, [2, 2, 2, 2], POLICY) == Decimal(1)


def test_a_backlog_raises_the_target_by_the_demand_weight_per_reference_queue() -> None:
    assert target_multiplier(16, [2, 2, 2, 2], POLICY) == Decimal("1.5")
    assert target_multiplier(48, [2, 2, 2, 2], POLICY) == Decimal("2.5")
    assert target_multiplier(10_000, [2, 2, 2, 2], POLICY) == POLICY.ceiling


def test_the_thinnest_block_counts_most() -> None:
    # One block at one server of the two wanted: shortfall 0.5 there, mean 0.125 -> (0.5 + 0.125) / 2
    assert scarcity([2, 1, 2, 2], 2) == Decimal("0.3125")
    assert target_multiplier(0, [2, 1, 2, 2], POLICY) == Decimal("1.3125")
    # however many blocks are well served: every route crosses the thin one
    assert scarcity([2] * 31 + [1], 2) > Decimal("0.25")
    # and a block nobody serves weighs more still
    assert target_multiplier(0, [2, 0, 2, 2], POLICY) > target_multiplier(0, [2, 1, 2, 2], POLICY)


def test_surplus_lowers_the_price_down_to_the_floor_and_no_further() -> None:
    assert target_multiplier(0, [3, 3, 3, 3], POLICY) == Decimal("0.875")
    assert target_multiplier(0, [4, 9, 4, 4], POLICY) == Decimal("0.75")
    steep = PricingPolicy(surplus_discount=Decimal("0.9"), floor=Decimal("0.5"))
    assert target_multiplier(0, [40, 40], steep) == Decimal("0.5")


def test_the_multiplier_moves_by_the_smoothing_share_and_snaps_within_the_deadband() -> None:
    steps = [Decimal(1)]
    while steps[-1] != Decimal(2) and len(steps) < 20:
        steps.append(next_multiplier(steps[-1], Decimal(2), POLICY))
    assert steps == [Decimal(s) for s in ("1", "1.5", "1.75", "1.875", "1.9375", "2")]
    # falling back reaches the catalogue price exactly, not 1.03
    down = [Decimal(2)]
    while down[-1] != Decimal(1) and len(down) < 20:
        down.append(next_multiplier(down[-1], Decimal(1), POLICY))
    assert down[-1] == Decimal(1) and len(down) == 6


def test_a_target_that_jitters_within_the_deadband_leaves_the_price_alone() -> None:
    price = Decimal("1.5")
    for target in ("1.52", "1.48", "1.55", "1.45", "1.5"):
        price = next_multiplier(price, Decimal(target), POLICY)
        assert price == Decimal("1.5")


def test_a_price_is_the_catalogue_price_times_the_multiplier_rounded_down_to_18_decimals() -> None:
    assert scaled_price(Decimal("0.000000000000000007"), Decimal("1.5")) == Decimal("0.000000000000000010")
    assert scaled_price(Decimal("0.0001"), Decimal("2.3456")) == Decimal("0.00023456")
    assert scaled_price(Decimal("0.012345678901234567"), Decimal("3")) == Decimal("0.037037036703703701")


def test_bounds_that_exclude_the_catalogue_price_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        PricingPolicy(floor=Decimal("1.1"))
    with pytest.raises(ValueError, match="ceiling"):
        PricingPolicy(ceiling=Decimal("0.9"))


def test_the_gateway_quotes_a_live_price_only_while_it_is_fresh_and_from_the_catalogue_prices_in_force() -> None:
    spec = ModelSpec(model_id="m", completion_price_per_token_far=Decimal("0.0002"))
    catalog = ModelCatalog(models=(spec,), default_model_id="m", default_price_far=Decimal("0.0001"))
    now = datetime.now(UTC)
    live = LivePrice(
        model_id="m",
        multiplier=Decimal("1.5"),
        prompt_price_per_token_far=Decimal(0),
        completion_price_per_token_far=Decimal("0.0003"),
        catalogue_prompt_price_far=Decimal(0),
        catalogue_completion_price_far=Decimal("0.0002"),
        queue_depth=16,
        thinnest_block_servers=2,
        priced_at=now,
    )
    assert current_prices(catalog, spec, live, now).completion_price_per_token_far == Decimal("0.0003")
    stale = now + timedelta(seconds=LIVE_PRICE_MAX_AGE_S + 1)
    assert current_prices(catalog, spec, live, stale).completion_price_per_token_far == Decimal("0.0002")
    repriced = live.model_copy(update={"catalogue_completion_price_far": Decimal("0.0001")})
    assert current_prices(catalog, spec, repriced, now).multiplier == Decimal(1)
    assert current_prices(catalog, spec, None, now).quote()["price_multiplier"] == "1"
