"""What cheating is worth: a cheat's expected gain and loss per cheated session, and the reserve that makes it lose.

A session is sampled with probability p (WORKER_VERIFY_FRACTION; the node-due rule only adds checks). A node
that skips the work of a session paying g:

- is not sampled (1 - p): it is paid g, its gain;
- is sampled (p): the mismatch slashes g and forfeits every unpaid row of its wallet, at least the wallet's
  reserve, its R most recent unpaid sessions (payouts.payable holds them back from payouts), so it loses
  g + R x g, in sessions paying g on average.

Expected gain (1 - p) x g, expected loss p x (R + 1) x g: cheating loses when p x (R + 1) > 1 - p, that is
R > 1/p - 2. The reserve is ceil(1/p) sessions by default, one more than the break-even 1/p - 1 at least.
"""

import math
from decimal import Decimal
from fractions import Fraction


def break_even_reserve(sample_rate: float) -> Fraction:
    """The reserve (in sessions) at which a cheat's expected loss equals its expected gain: (1 - p)/p - 1,
    exactly (the rate as written, 0.05, not its nearest binary float)."""
    p = _exact(sample_rate)
    return (1 - p) / p - 1


def cheating_loses(sample_rate: float, reserve_sessions: int) -> bool:
    """Whether a cheated session's expected loss exceeds its expected gain: p x (R + 1) > 1 - p."""
    return reserve_sessions > break_even_reserve(sample_rate)


def default_reserve(sample_rate: float) -> int:
    """ceil(1/p): the reserve used unless PAYOUT_RESERVE_SESSIONS says more."""
    return math.ceil(1 / _exact(sample_rate))


def expected_gain(sample_rate: float) -> float:
    """What a cheated session pays its cheat on average, in sessions' pay (g = 1): it is paid when not sampled.
    (Odds, not money: the ledger's amounts stay Decimal.)"""
    _check_rate(sample_rate)
    return 1 - sample_rate


def expected_loss(sample_rate: float, reserve_sessions: int) -> float:
    """What a cheated session costs its cheat on average, in sessions' pay: when it is sampled, the session
    itself and the wallet's reserve."""
    _check_rate(sample_rate)
    return sample_rate * (reserve_sessions + 1)


def _check_rate(sample_rate: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"a sample rate is in (0, 1], not {sample_rate}")


def _exact(sample_rate: float) -> Fraction:
    _check_rate(sample_rate)
    return Fraction(Decimal(repr(sample_rate)))
