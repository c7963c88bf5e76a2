"""$FAR amounts as token base units: 18 decimals, so the ledger's NUMERIC(38,18) quantum is exactly one unit.

Conversions are exact integers, never floats; an amount with more than 18 decimals is refused, not rounded.
"""

from decimal import Context, Decimal

TOKEN_DECIMALS = 18
_EXACT = Context(prec=100)
"""Decimal's default 28 digits would round a 38-digit amount; 100 never does for uint256-sized values."""


def to_base_units(amount_far: Decimal) -> int:
    """The token base units of `amount_far`; ValueError if it is negative or finer than 18 decimals."""
    if not amount_far.is_finite() or amount_far < 0:
        raise ValueError(f"{amount_far} is not a payable amount")
    scaled = amount_far.scaleb(TOKEN_DECIMALS, context=_EXACT)
    if scaled != scaled.to_integral_value(context=_EXACT):
        raise ValueError(f"{amount_far} has more than {TOKEN_DECIMALS} decimals")
    return int(scaled)


def from_base_units(units: int) -> Decimal:
    """The $FAR amount of `units` base units, exact (e.g. 1 -> 0.000000000000000001)."""
    return Decimal(units).scaleb(-TOKEN_DECIMALS, context=_EXACT)


def wei_to_gwei(wei: int) -> Decimal:
    return Decimal(wei).scaleb(-9, context=_EXACT)


def format_far(units: int) -> str:
    """`units` as a readable $FAR amount: exact, without trailing zeros ("0.000001", "12.5", "3")."""
    return format(from_base_units(units).normalize(context=_EXACT), "f")
