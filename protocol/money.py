"""Money rules: $FAR amounts are Decimals with 18 decimal places, and payments never exceed the cost.

On the wire an amount is a string ("0.0001"), never a JSON number, so no float ever touches it. A session costs
its prompt tokens at the prompt price plus its generated tokens at the completion price (`session_cost`); the
platform's fee is taken from that cost first (`platform_fee`, basis points, rounded down), and the rest is split
among the nodes that served it in proportion to their work, each share rounded down to 18 decimals; what
rounding leaves over stays with the platform and is recorded, so the books balance exactly:
sum(payments) + fee + remainder == cost.
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


def plain_text(amount: Decimal) -> str:
    """`amount` as plain decimal text, every digit kept and no trailing zeros or exponent: 0.003, 0, 12.5. Not
    `normalize()`, which rounds to Decimal's default 28 digits (a NUMERIC(38,18) amount of 10**10 or more)."""
    text = format(amount, "f")
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text in ("", "-0") else text


def far_sum(amounts: Iterable[Decimal]) -> Decimal:
    """Exact sum of amounts; the built-in sum() would round beyond 28 significant digits."""
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def cost_of(tokens: int, price_per_token_far: Decimal) -> Decimal:
    """What `tokens` generated tokens cost; exact, since both factors are exact."""
    return _EXACT.multiply(price_per_token_far, tokens)


def billed_prompt_tokens(prompt_tokens: int, tokens_generated: int) -> int:
    """The prompt tokens a session pays for: all of them once it generated a token, none before.

    The prefill is what produced the first token, so a request that ends before any token (refused by the
    worker, no route, cancelled while queued) costs its buyer nothing, as it always did."""
    return prompt_tokens if tokens_generated > 0 else 0


def session_cost(
    prompt_tokens: int, tokens_generated: int, prompt_price_far: Decimal, completion_price_far: Decimal
) -> Decimal:
    """What a session costs: billed prompt tokens x prompt price + generated tokens x completion price; exact."""
    prompt_far = cost_of(billed_prompt_tokens(prompt_tokens, tokens_generated), prompt_price_far)
    return _EXACT.add(prompt_far, cost_of(tokens_generated, completion_price_far))


MAX_FEE_BPS = 10_000
"""A fee of 10,000 basis points is the whole cost; more would pay the platform what the buyer never paid."""


def platform_fee(cost_far: Decimal, fee_bps: int) -> Decimal:
    """The platform's fee on `cost_far`: cost x bps / 10,000, rounded down to 18 decimals (the buyer's cost is
    exact, so rounding the fee down leaves the providers at least their exact share of the rest)."""
    if not 0 <= fee_bps <= MAX_FEE_BPS:
        raise ValueError(f"a platform fee is 0 to {MAX_FEE_BPS} basis points, not {fee_bps}")
    return _EXACT.divide(_EXACT.multiply(cost_far, fee_bps), MAX_FEE_BPS).quantize(
        FAR_QUANTUM, rounding=ROUND_DOWN, context=_EXACT
    )


def split_with_fee(
    cost_far: Decimal, work_by_node: Mapping[str, int], fee_bps: int
) -> tuple[dict[str, Decimal], Decimal, Decimal]:
    """Take the platform's fee from `cost_far`, then split the rest among nodes by work (`split_payment`).

    Returns (payment per node, fee, remainder), with sum(payments) + fee + remainder == cost_far exactly."""
    fee = platform_fee(cost_far, fee_bps)
    payments, remainder = split_payment(_EXACT.subtract(cost_far, fee), work_by_node)
    return payments, fee, remainder


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
