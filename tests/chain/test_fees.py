import pytest

from chain.fees import FeeCapReached, Fees, first_offer, replacement

GWEI = 10**9


def test_a_first_offer_leaves_room_for_the_base_fee_to_double() -> None:
    assert first_offer(10 * GWEI, priority_fee=GWEI, cap=500 * GWEI) == Fees(21 * GWEI, GWEI)
    assert first_offer(400 * GWEI, priority_fee=GWEI, cap=500 * GWEI).max_fee_per_gas == 500 * GWEI


def test_a_replacement_raises_both_fees_by_at_least_the_bump() -> None:
    previous = Fees(max_fee_per_gas=21 * GWEI, max_priority_fee_per_gas=GWEI)
    bumped = replacement(previous, 10 * GWEI, bump_percent=10, cap=500 * GWEI)
    assert bumped.max_priority_fee_per_gas >= previous.max_priority_fee_per_gas * 110 // 100
    assert bumped.max_fee_per_gas >= previous.max_fee_per_gas * 110 // 100
    assert replacement(Fees(1, 0), 0, bump_percent=10, cap=GWEI).max_priority_fee_per_gas == 1  # never stays zero


def test_a_replacement_above_the_cap_is_refused() -> None:
    with pytest.raises(FeeCapReached, match="PAYOUT_MAX_FEE_GWEI"):
        replacement(Fees(100 * GWEI, GWEI), 10 * GWEI, bump_percent=25, cap=110 * GWEI)
