from decimal import Decimal

import pytest

from chain.units import from_base_units, to_base_units
from protocol.money import MAX_FAR


def test_one_quantum_of_the_ledger_is_one_base_unit() -> None:
    assert to_base_units(Decimal("0.000000000000000001")) == 1
    assert to_base_units(Decimal("1")) == 10**18
    assert from_base_units(1) == Decimal("1E-18")


def test_the_largest_ledger_amount_converts_exactly_both_ways() -> None:
    units = to_base_units(MAX_FAR)
    assert units == 10**38 - 1  # 38 digits: beyond Decimal's default 28-digit context
    assert from_base_units(units) == MAX_FAR


def test_amounts_finer_than_18_decimals_or_negative_are_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="more than 18 decimals"):
        to_base_units(Decimal("0.0000000000000000001"))
    with pytest.raises(ValueError, match="not a payable amount"):
        to_base_units(Decimal("-1"))
