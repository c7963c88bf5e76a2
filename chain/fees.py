"""EIP-1559 fees of payout transactions: a first offer from the latest base fee, and replacements that raise
both fees by at least the bump nodes require to accept a transaction with the same nonce (10% for geth and
ganache; PAYOUT_FEE_BUMP_PERCENT, 25 by default), never above the configured cap.
"""

from dataclasses import dataclass
from decimal import Decimal

GWEI = 10**9


class FeeCapReached(RuntimeError):
    """A replacement would have to offer more than PAYOUT_MAX_FEE_GWEI."""


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


def gwei(amount: Decimal) -> int:
    return int(amount * GWEI)


def first_offer(base_fee: int, *, priority_fee: int, cap: int) -> Fees:
    """Room for the base fee to double before the transaction stops being includable, plus the tip."""
    tip = min(priority_fee, cap)
    return Fees(max_fee_per_gas=min(2 * base_fee + tip, cap), max_priority_fee_per_gas=tip)


def _bumped(value: int, percent: int) -> int:
    return -(-value * (100 + percent) // 100)  # rounded up, so a bump of a small value is never zero


def replacement(previous: Fees, base_fee: int, *, bump_percent: int, cap: int) -> Fees:
    """Fees for the same nonce that a node accepts in place of `previous`: both raised by `bump_percent`."""
    tip = max(_bumped(previous.max_priority_fee_per_gas, bump_percent), 1)
    max_fee = max(_bumped(previous.max_fee_per_gas, bump_percent), 2 * base_fee + tip)
    if max_fee > cap or tip > cap:
        raise FeeCapReached(
            f"replacing needs a max fee of {max_fee} wei/gas, above PAYOUT_MAX_FEE_GWEI ({cap} wei/gas)"
        )
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)
