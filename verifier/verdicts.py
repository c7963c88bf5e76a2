"""Verdicts into the ledger: one row per verified span, slashes for mismatches, reputations and bans.

Everything one message changes is written in one transaction, and a message verified twice (the verifier
died before acknowledging it) records nothing twice: verdicts are keyed by (request_id, span_index), and a
node's counters move only for verdicts this transaction inserted. A sampled session that cannot be judged for a
reason that is not its servers' is recorded apart (`record_unverified`, `far_unverified_sessions`), never as a
verdict.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from protocol.verification import UnverifiedCause
from verifier.recompute import SpanVerdict

_INSERT_VERDICTS = """
INSERT INTO far_verifications (request_id, span_index, model_id, node_id, start_block, end_block, steps, tokens,
                               max_error, tolerance, verdict, first_bad_step, cause)
SELECT $1, v.span_index, $2, v.node_id, v.start_block, v.end_block, v.steps, v.tokens, v.max_error, v.tolerance,
       CASE WHEN v.first_bad_step IS NULL THEN 'ok' ELSE 'mismatch' END, v.first_bad_step,
       CASE WHEN v.first_bad_step IS NOT NULL THEN coalesce(v.cause, 'over-tolerance') END
  FROM unnest($3::int[], $4::text[], $5::int[], $6::int[], $7::int[], $8::int[], $9::float8[], $10::float8[],
              $11::int[], $12::text[])
       AS v(span_index, node_id, start_block, end_block, steps, tokens, max_error, tolerance, first_bad_step, cause)
ON CONFLICT (request_id, span_index) DO NOTHING
RETURNING node_id, verdict
"""

_COUNT_VERDICTS = """
INSERT INTO far_nodes AS n (node_id, verified_ok, verified_mismatches, last_verified_at)
SELECT node_id, ok, bad, now() FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(node_id, ok, bad)
ORDER BY node_id
ON CONFLICT (node_id) DO UPDATE SET verified_ok = n.verified_ok + EXCLUDED.verified_ok,
                                    verified_mismatches = n.verified_mismatches + EXCLUDED.verified_mismatches,
                                    last_verified_at = EXCLUDED.last_verified_at
"""

# A ban follows the wallet: mismatches count across every node of the offender's registered wallet
# (`far_wallet_nodes`), and a ban bans the wallet (`far_wallet_bans`, which `far_node_reputation` applies to any
# peer id registered to or announcing it, new ones included) and every node of it.
_BAN = """
WITH offenders AS (
    SELECT o.node_id FROM unnest($1::text[]) AS o(node_id)
     WHERE (SELECT count(*) FROM far_verifications v
             WHERE v.node_id IN (SELECT far_wallet_nodes(o.node_id)) AND v.verdict = 'mismatch'
               AND v.verified_at >= now() - make_interval(secs => $3)) >= $4
), wallets AS (
    INSERT INTO far_wallet_bans AS b (wallet, banned_until, node_id)
    SELECT DISTINCT ON (r.wallet) r.wallet, now() + make_interval(secs => $2), r.node_id
      FROM offenders o JOIN far_node_registrations r ON r.node_id = o.node_id
     ORDER BY r.wallet, r.node_id
    ON CONFLICT (wallet) DO UPDATE SET banned_until = greatest(b.banned_until, EXCLUDED.banned_until),
                                       node_id = EXCLUDED.node_id, banned_at = now()
)
UPDATE far_nodes n SET banned_until = now() + make_interval(secs => $2)
 WHERE n.node_id IN (SELECT far_wallet_nodes(o.node_id) FROM offenders o)
RETURNING node_id, banned_until
"""

_CURRENT_BANS = "SELECT node_id, banned_until FROM far_node_reputation WHERE banned"
_PROBATION = """
SELECT rep.node_id, rep.reputation FROM far_node_reputation rep JOIN far_nodes n ON n.node_id = rep.node_id
 WHERE rep.on_probation AND coalesce(n.last_seen_at, n.first_seen_at) >= now() - interval '1 day'
"""


@dataclass(frozen=True)
class BanPolicy:
    """A node with `after` mismatches within `window_s` is kept out of routes for `cooldown_s`."""

    after: int = 2
    window_s: float = 86_400.0
    cooldown_s: float = 3_600.0


@dataclass(frozen=True)
class Recorded:
    """What recording one message's verdicts changed."""

    inserted: int
    slashed: int
    """Contribution rows taken: convicted rows slashed, and the offenders' wallets' unpaid rows forfeited."""
    banned: dict[str, datetime]
    reputation: dict[str, Decimal]


async def record_verdicts(
    connection: asyncpg.Connection,
    request_id: str,
    model_id: str,
    verdicts: list[SpanVerdict],
    policy: BanPolicy = BanPolicy(),
    span_indices: Sequence[int] | None = None,
) -> Recorded:
    """Record `verdicts` (in the message's span order; `span_indices` gives each one's place in the message when
    some spans had none), slash what they convict, forfeit the convicted wallets' unpaid earnings, ban repeat
    offenders (and their wallets)."""
    indices = list(range(len(verdicts)) if span_indices is None else span_indices)
    if len(indices) != len(verdicts):
        raise ValueError(f"{len(indices)} span indices for {len(verdicts)} verdicts")
    async with connection.transaction():
        rows = await connection.fetch(
            _INSERT_VERDICTS,
            request_id,
            model_id,
            indices,
            [v.peer_id for v in verdicts],
            [v.start_block for v in verdicts],
            [v.end_block for v in verdicts],
            [v.steps for v in verdicts],
            [v.tokens for v in verdicts],
            [v.max_error for v in verdicts],
            [v.tolerance for v in verdicts],
            [v.first_bad_step for v in verdicts],
            [v.cause for v in verdicts],
        )
        counts: dict[str, list[int]] = {}
        for row in rows:
            counts.setdefault(row["node_id"], [0, 0])[row["verdict"] == "mismatch"] += 1
        nodes = sorted(counts)
        if nodes:
            await connection.execute(
                _COUNT_VERDICTS, nodes, [counts[n][0] for n in nodes], [counts[n][1] for n in nodes]
            )
        slashed = int(await connection.fetchval("SELECT far_apply_slashes()"))
        offenders = [n for n in nodes if counts[n][1]]
        banned = {}
        if offenders:
            for row in await connection.fetch(_BAN, offenders, policy.cooldown_s, policy.window_s, policy.after):
                banned[row["node_id"]] = row["banned_until"]
        reputation = {
            row["node_id"]: row["reputation"]
            for row in await connection.fetch(
                "SELECT node_id, reputation FROM far_node_reputation WHERE node_id = ANY ($1::text[])", nodes
            )
        }
    return Recorded(inserted=len(rows), slashed=slashed, banned=banned, reputation=reputation)


async def add_failed_steps(connection: asyncpg.Connection, counts: dict[str, int]) -> None:
    """Add steps that failed on each node (counted by the workers) to its reputation."""
    nodes = sorted(counts)
    await connection.execute(
        "INSERT INTO far_nodes AS n (node_id, failed_steps) "
        "SELECT node_id, failed FROM unnest($1::text[], $2::bigint[]) AS t(node_id, failed) ORDER BY node_id "
        "ON CONFLICT (node_id) DO UPDATE SET failed_steps = n.failed_steps + EXCLUDED.failed_steps",
        nodes,
        [counts[node] for node in nodes],
    )


async def current_bans(connection: asyncpg.Connection) -> dict[str, datetime]:
    """Every node banned now, by its own ban or its wallet's (a new peer id of a banned wallet included), with
    when the ban ends: the ledger is the source of truth that `trust:banned` copies."""
    return {row["node_id"]: row["banned_until"] for row in await connection.fetch(_CURRENT_BANS)}


async def probation_scores(connection: asyncpg.Connection) -> dict[str, Decimal]:
    """The scores of the peers on probation (fewer than two passed checks) seen in the last day: a peer no check
    has reached yet has no verdict to publish its score with, yet must not look reputable to the workers."""
    return {row["node_id"]: row["reputation"] for row in await connection.fetch(_PROBATION)}


async def apply_pending_slashes(connection: asyncpg.Connection) -> int:
    """Slash what verdicts recorded before their sessions reached the ledger (or while a payout batch held the
    row, which has since failed) convict, and run forfeitures not yet run; returns rows taken."""
    return int(await connection.fetchval("SELECT far_apply_slashes()"))


async def pending_slashes(connection: asyncpg.Connection) -> int:
    """Mismatch verdicts not yet applied (their sessions not yet in the ledger)."""
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM far_verifications WHERE verdict = 'mismatch' AND slash_outcome IS NULL"
        )
    )


async def record_unverified(
    connection: asyncpg.Connection, request_id: str, model_id: str | None, cause: UnverifiedCause, spans: int
) -> bool:
    """Record that the sampled session `request_id` ends unverified for `cause`, not its servers' doing; False when
    it already was (a notice or an entry handled twice). Its rows then become payable as an unsampled session's
    are (`payouts.payable`); node counters, reputation, bans and slashes read verdicts only, so this moves none
    of them, and a mismatch of the same session still stops its node's row."""
    inserted = await connection.fetchval(
        "INSERT INTO far_unverified_sessions (request_id, model_id, cause, spans) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id,
        model_id,
        cause,
        spans,
    )
    return bool(inserted)
