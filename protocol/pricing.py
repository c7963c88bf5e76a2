"""Prices that follow scarcity: the formula that turns a model's queue depth and swarm coverage into a multiplier
of its catalogue prices, and the smoothing that keeps that multiplier from flapping.

Pure functions of Decimals and counts, so the pricer (`accounting.pricer`) and its tests agree on every digit, and
docs/pricing.md can state the formula with the defaults that `accounting.settings.PricingSettings` documents:

    demand   = queue_depth / queue_reference                                 (jobs queued or running)
    short_b  = max(0, 1 - servers_b / target_servers)                        (per block b)
    scarcity = (max_b short_b + mean_b short_b) / 2                          (the thinnest block counts most)
    surplus  = min(1, max(0, min_b servers_b - target_servers) / target_servers)
    target   = clamp(1 + demand_weight * demand + scarcity_weight * scarcity - surplus_discount * surplus,
                     floor, ceiling)

Providers share what a session pays (less the platform's fee) by work, each block-token weighted by that
block's premium, fixed at admission (`block_premium_bps`): 10,000 basis points x (1 + provider_premium x
short_b). Serving the thin blocks earns more of the same pool; the buyer's price, raised by the same shortfall,
carries it, and the split still balances to the last decimal (`money.split_with_fee`).

The multiplier moves towards its target by `smoothing` of the gap each recomputation, and not at all while the
gap is within `deadband` (hysteresis: a queue that breathes by a job or two leaves the price alone); a step that
lands within the deadband of its target snaps to it, so a price that falls back reaches the catalogue price
exactly rather than hovering just above it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Context, Decimal

from protocol.money import FAR_QUANTUM, MAX_FAR

MULTIPLIER_QUANTUM = Decimal("0.0001")
"""Multipliers are kept to 4 decimals (NUMERIC(12,4) in the price history)."""
MAX_BLOCKS = 10_000
"""More transformer blocks than any model has; bounds the per-block premiums a job or a live price carries."""
PREMIUM_BASE_BPS = 10_000
"""A block's weight in a provider's share, in basis points: 10,000 is work paid at par."""
MAX_PROVIDER_PREMIUM = Decimal(10)
"""The largest PRICING_PROVIDER_PREMIUM: an unserved block's work would weigh 11 times a served one's."""
_EXACT = Context(prec=100)
"""A price of up to 38 digits times a multiplier would round in Decimal's default 28 digits."""


@dataclass(frozen=True)
class PricingPolicy:
    """The formula's parameters (each an env var of `PricingSettings`, documented there and in docs/pricing.md)."""

    floor: Decimal = Decimal("0.5")
    ceiling: Decimal = Decimal("3")
    queue_reference: int = 16
    demand_weight: Decimal = Decimal("0.5")
    target_servers: int = 2
    scarcity_weight: Decimal = Decimal("1")
    surplus_discount: Decimal = Decimal("0.25")
    smoothing: Decimal = Decimal("0.5")
    deadband: Decimal = Decimal("0.05")
    provider_premium: Decimal = Decimal("1")

    def __post_init__(self) -> None:
        if not Decimal(0) < self.floor <= Decimal(1) <= self.ceiling:
            raise ValueError(f"price bounds need 0 < floor <= 1 <= ceiling, got {self.floor} and {self.ceiling}")
        if self.queue_reference < 1 or self.target_servers < 1:
            raise ValueError("queue_reference and target_servers must be at least 1")
        if not Decimal(0) < self.smoothing <= Decimal(1):
            raise ValueError(f"smoothing is in (0, 1], got {self.smoothing}")
        if min(self.demand_weight, self.scarcity_weight, self.surplus_discount, self.deadband) < 0:
            raise ValueError("weights, discount and deadband cannot be negative")
        if not Decimal(0) <= self.provider_premium <= MAX_PROVIDER_PREMIUM:
            raise ValueError(f"provider_premium is 0 to {MAX_PROVIDER_PREMIUM}, got {self.provider_premium}")


def scarcity(coverage: Sequence[int], target_servers: int) -> Decimal:
    """How under-served a swarm is, 0 (every block has `target_servers` or more) to 1 (every block unserved).

    The thinnest block's shortfall counts for half by itself and again in the mean: one block left with a single
    server raises the price of the whole model, since every route crosses it."""
    if not coverage:
        return Decimal(1)
    target = Decimal(target_servers)
    shortfalls = [max(Decimal(0), 1 - Decimal(c) / target) for c in coverage]
    return (max(shortfalls) + sum(shortfalls, Decimal(0)) / len(shortfalls)) / 2


def surplus(coverage: Sequence[int], target_servers: int) -> Decimal:
    """How far the thinnest block is above the target, 0 to 1 (at twice the target or more)."""
    if not coverage:
        return Decimal(0)
    target = Decimal(target_servers)
    return min(Decimal(1), max(Decimal(0), Decimal(min(coverage)) - target) / target)


def target_multiplier(queue_depth: int, coverage: Sequence[int], policy: PricingPolicy) -> Decimal:
    """Where the multiplier is headed given the queue and the servers per block, within the policy's bounds."""
    demand = Decimal(max(queue_depth, 0)) / Decimal(policy.queue_reference)
    raw = (
        1
        + policy.demand_weight * demand
        + policy.scarcity_weight * scarcity(coverage, policy.target_servers)
        - policy.surplus_discount * surplus(coverage, policy.target_servers)
    )
    return min(policy.ceiling, max(policy.floor, raw)).quantize(MULTIPLIER_QUANTUM, rounding=ROUND_HALF_EVEN)


def next_multiplier(current: Decimal, target: Decimal, policy: PricingPolicy) -> Decimal:
    """One recomputation's move from `current` towards `target` (see the module docstring: smoothing, deadband)."""
    gap = target - current
    if abs(gap) <= policy.deadband:
        return current
    moved = (current + policy.smoothing * gap).quantize(MULTIPLIER_QUANTUM, rounding=ROUND_HALF_EVEN)
    if abs(target - moved) <= policy.deadband:
        return target
    return moved


def scaled_price(catalogue_price: Decimal, multiplier: Decimal) -> Decimal:
    """A catalogue price times the multiplier, rounded down to 18 decimals (the buyer never pays a fraction of a
    base unit more than the formula says) and never above what the ledger can hold; without trailing zeros, so it
    is quoted as the catalogue's prices are ("0.00045", not "0.000450000000000000")."""
    exact = _EXACT.multiply(catalogue_price, multiplier).quantize(FAR_QUANTUM, ROUND_DOWN, _EXACT)
    return min(MAX_FAR, exact).normalize(_EXACT)


def block_premium_bps(coverage: Sequence[int], policy: PricingPolicy) -> tuple[int, ...]:
    """Each block's weight in its providers' shares, in basis points: par (10,000) for a block with
    `target_servers` or more, up to (1 + provider_premium) x par for a block nobody serves; rounded down."""
    target = Decimal(policy.target_servers)
    return tuple(
        int(PREMIUM_BASE_BPS * (1 + policy.provider_premium * max(Decimal(0), 1 - Decimal(c) / target)))
        for c in coverage
    )
