"""Money rules: $FAR amounts are Decimals with 18 decimal places, and payments never exceed the cost.

On the wire an amount is a string ("0.0001"), never a JSON number, so no float ever touches it. A session's
cost is split among the nodes that served it in proportion to their work, each share rounded down to 18
decimals; what rounding leaves over stays with the platform and is recorded, so the books balance exactly.
"""

from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Context, Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer

FAR_DECIMALS = 18
FAR_QUANTUM = Decimal(1).scaleb(-FAR_DECIMALS)
"""The smallest amount of $FAR the ledger records (NUMERIC(38,18))."""
MAX_FAR = Decimal("99999999999999999999.999999999999999999")
"""The largest amount NUMERIC(38,18) holds (spelled out: `10**20 - FAR_QUANTUM` rounds to 10**20 in 28 digits)."""
_EXACT = Context(prec=100)
"""Decimal's default 28 digits would round a 38-digit amount; this context never does for our ranges."""


def _reject_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError('money must be a decimal string such as "0.0001", not a float')
    return value


FarAmount = Annotated[
    Decimal,
    # Constraints before the validator: pydantic-core then checks them natively (the other order runs them in
    # Python, which was most of the cost of parsing a usage record).
    Field(ge=0, le=MAX_FAR, decimal_places=FAR_DECIMALS, allow_inf_nan=False),
    BeforeValidator(_reject_float),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
"""A non-negative $FAR amount with at most 18 decimals, serialised to JSON as a plain decimal string."""


def far_sum(amounts: Iterable[Decimal]) -> Decimal:
    """Exact sum of amounts; the built-in sum() would round beyond 28 significant digits."""
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def cost_of(tokens: int, price_per_token_far: Decimal) -> Decimal:
    """What `tokens` generated tokens cost; exact, since both factors are exact."""
    return _EXACT.multiply(price_per_token_far, tokens)


def split_payment(cost_far: Decimal, work_by_node: Mapping[str, int]) -> tuple[dict[str, Decimal], Decimal]:
    """Split `cost_far` among nodes in proportion to their work units.

    Each payment is rounded down to 18 decimals; returns (payment per node, platform remainder), with
    sum(payments) + remainder == cost_far exactly. With no work at all, everything is remainder.
    """
    total_work = sum(work_by_node.values())
    if total_work <= 0:
        return {node: Decimal(0) for node in work_by_node}, cost_far
    payments = {
        node: _EXACT.divide(_EXACT.multiply(cost_far, work), total_work).quantize(
            FAR_QUANTUM, rounding=ROUND_DOWN, context=_EXACT
        )
        for node, work in work_by_node.items()
    }
    return payments, _EXACT.subtract(cost_far, far_sum(payments.values()))
