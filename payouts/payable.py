"""When a contribution row may be paid: after verification could have convicted it, and never the wallet's reserve.

Paying a row is final (the chain cannot be asked for the money back), and a slash or a forfeiture can only take
rows still unpaid. So the claim (`payouts.batches.LOCK_OWED_ROWS`) takes a row only when all of these hold:

- **verified or old enough**: its session was sampled (`far_mesh_sessions.spot_checked`) and the verifier has
  recorded its verdicts, or it was not sampled and finished at least `max_lag_s` ago (the verifier's stated
  maximum lag: a mismatch of another session of the same wallet has had that long to forfeit it). A sampled
  session whose check could not be judged through no fault of its servers (dropped by the worker, an unknown
  model, a malformed entry, recordings the worker got wrong, a check that never reached the verifier:
  `far_unverified_sessions`) is paid exactly as an unsampled one, so being dropped neither strands an honest
  provider nor shelters a cheat. A sampled session with neither a verdict nor that record is held until it has one;
- **not convicted**: no mismatch verdict names the row (applied or not: a verdict that waits for its slash still
  stops the claim);
- **not the reserve**: it is not among the `reserve_sessions` most recent unpaid rows of its wallet, unless it
  finished more than `reserve_hold_s` ago. The reserve is what a mismatch forfeits at least, and its size comes
  from the sample rate (docs/verification.md, "What cheating costs");
- **the wallet is not banned** (`far_wallet_bans`).

Every clause is SQL over the claim's `c` (the contribution row) and `r` (its node's registration), with the
hold's values as the claim's parameters $3, $4 and $5.
"""

from dataclasses import dataclass

from payouts.settings import PayoutSettings

_DEFAULTS = PayoutSettings.model_fields


@dataclass(frozen=True)
class PayoutHold:
    """What the claim holds back; the defaults are the settings' (payouts.settings.PayoutSettings)."""

    max_lag_s: float = _DEFAULTS["payout_verify_max_lag_s"].default
    reserve_sessions: int = PayoutSettings.reserve_at(_DEFAULTS["worker_verify_fraction"].default)
    reserve_hold_s: float = _DEFAULTS["payout_reserve_hold_s"].default

    @classmethod
    def from_settings(cls, settings: PayoutSettings) -> "PayoutHold":
        return cls(
            settings.payout_verify_max_lag_s,
            settings.reserve_sessions,
            settings.payout_reserve_hold_s,
        )

    def __post_init__(self) -> None:
        if self.max_lag_s < 0 or self.reserve_sessions < 0:
            raise ValueError("a payout hold's lag and reserve are not negative")
        if self.reserve_hold_s <= self.max_lag_s:
            raise ValueError(
                f"the reserve is held {self.reserve_hold_s} s, no longer than the verifier's lag ({self.max_lag_s} s):"
                " a late verdict would find it paid"
            )

    def parameters(self) -> tuple[float, int, float]:
        """The claim's $3, $4 and $5."""
        return (self.max_lag_s, self.reserve_sessions, self.reserve_hold_s)


VERIFIED_OR_OLD_ENOUGH = """
EXISTS (SELECT 1 FROM far_mesh_sessions s WHERE s.id = c.session_id AND (
        (s.spot_checked AND EXISTS (SELECT 1 FROM far_verifications v WHERE v.request_id = s.request_id))
     OR ((NOT s.spot_checked OR EXISTS (SELECT 1 FROM far_unverified_sessions u WHERE u.request_id = s.request_id))
         AND s.finished_at <= now() - make_interval(secs => $3::float8))))
AND NOT EXISTS (SELECT 1 FROM far_mesh_sessions s JOIN far_verifications v ON v.request_id = s.request_id
                 WHERE s.id = c.session_id AND v.node_id = c.node_id AND v.verdict = 'mismatch')"""
"""A row whose session was verified (and did not convict it), or was not sampled, or was recorded as not verified,
and is older than the lag."""

NOT_RESERVED = """
c.id NOT IN (
    SELECT ranked.id FROM (
        SELECT c2.id, s2.finished_at,
               row_number() OVER (PARTITION BY r2.wallet ORDER BY s2.finished_at DESC, c2.id DESC) AS recent
          FROM far_session_contributions c2
          JOIN far_node_registrations r2 ON r2.node_id = c2.node_id
          JOIN far_mesh_sessions s2 ON s2.id = c2.session_id
         WHERE c2.paid_at IS NULL AND c2.payment_batch_id IS NULL AND c2.payment_far > 0
    ) ranked
    WHERE ranked.recent <= $4::int AND ranked.finished_at > now() - make_interval(secs => $5::float8))"""
"""A row outside its wallet's reserve: the `$4` most recent rows still forfeitable, until `$5` seconds old."""

WALLET_NOT_BANNED = "NOT EXISTS (SELECT 1 FROM far_wallet_bans b WHERE b.wallet = r.wallet AND b.banned_until > now())"
"""A row whose wallet (`r`, its node's registration) is not banned now."""

DEFAULT_HOLD = PayoutHold()
"""The hold at the settings' defaults: what a claim holds back unless told otherwise."""

PAYABLE = f"({VERIFIED_OR_OLD_ENOUGH}\nAND {NOT_RESERVED}\nAND {WALLET_NOT_BANNED})"
"""Every clause above, for the claim's WHERE."""
