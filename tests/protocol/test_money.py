"""Payments split a session's cost by work, round down, and always reconcile to the cost exactly."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from protocol.money import FAR_QUANTUM, FarAmount, cost_of, far_sum, plain_text, split_payment


class Priced(BaseModel):
    amount: FarAmount


def test_the_seed_example_splits_by_tokens_contributed() -> None:
    payments, remainder = split_payment(Decimal("0.0512"), {"gpu1": 170, "gpu2": 171, "gpu3": 171})
    assert payments == {"gpu1": Decimal("0.017"), "gpu2": Decimal("0.0171"), "gpu3": Decimal("0.0171")}
    assert remainder == 0


def test_indivisible_cost_leaves_a_recorded_remainder_with_the_platform() -> None:
    payments, remainder = split_payment(Decimal("1"), {"a": 1, "b": 1, "c": 1})
    assert set(payments.values()) == {Decimal("0.333333333333333333")}
    assert remainder == Decimal("0.000000000000000001")


def test_no_work_means_nothing_is_paid_and_everything_is_remainder() -> None:
    assert split_payment(Decimal("0.5"), {}) == ({}, Decimal("0.5"))


@given(
    cost=st.decimals(min_value=0, max_value=Decimal(10) ** 19, places=18, allow_nan=False),
    work=st.dictionaries(st.text(min_size=1, max_size=8), st.integers(min_value=0, max_value=10**12), max_size=12),
)
def test_payments_plus_remainder_equal_the_cost_exactly_and_nobody_is_overpaid(
    cost: Decimal, work: dict[str, int]
) -> None:
    payments, remainder = split_payment(cost, work)
    assert far_sum([*payments.values(), remainder]) == cost
    assert 0 <= remainder < FAR_QUANTUM * max(len(work), 1) or sum(work.values()) == 0
    assert all(p >= 0 and int(p.as_tuple().exponent) >= -18 for p in payments.values())


def test_sums_are_exact_where_the_builtin_sum_would_round() -> None:
    amounts = [Decimal("10000000000"), Decimal("0.000000000000000001")]
    assert sum(amounts) != Decimal("10000000000.000000000000000001")
    assert far_sum(amounts) == Decimal("10000000000.000000000000000001")


def test_cost_is_exact_even_beyond_decimals_default_precision() -> None:
    price = Decimal("12345678901234567890.123456789012345678")
    assert cost_of(3, price) == Decimal("37037036703703703670.370370367037037034")


def test_amounts_travel_as_strings_and_floats_are_refused() -> None:
    assert Priced(amount=Decimal("0.0001")).model_dump_json() == '{"amount":"0.0001"}'
    assert Priced.model_validate_json('{"amount":"0.0001"}').amount == Decimal("0.0001")
    with pytest.raises(ValidationError, match="not a float"):
        Priced(amount=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="18 decimal places"):
        Priced(amount=Decimal("0.0000000000000000001"))
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Priced(amount=Decimal("-1"))


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("12345678901.999999999999999999", "12345678901.999999999999999999"),  # 29 digits: normalize() rounds up
        ("0.003000000000000000", "0.003"),
        ("12.500", "12.5"),
        ("1E+2", "100"),
        ("0E-18", "0"),
        ("-0.000", "0"),
        ("-1.50", "-1.5"),
    ],
)
def test_an_amount_is_shown_with_every_digit_it_has_and_no_trailing_zeros(amount: str, text: str) -> None:
    assert plain_text(Decimal(amount)) == text
