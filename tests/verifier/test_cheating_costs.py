"""Cheating costs the cheat's wallet more than it gains: a mismatch forfeits the wallet's unpaid earnings (its
reserve at least), new peers start on probation, and a ban follows the wallet to new peer ids."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from accounting.batch_writer import write_batch
from devstack.harness.registrations import register_nodes
from devstack.harness.wallets import wallet_for
from payouts.batches import claim_batch
from payouts.payable import PayoutHold
from payouts.settings import PayoutSettings
from protocol import keys
from protocol.cheating_odds import break_even_reserve, expected_gain, expected_loss
from protocol.money import far_sum
from protocol.usage import UsageRecord
from tests.fixtures.ledger import unique_id, usage_record
from tests.verifier.helpers import verdict
from verifier.verdicts import BanPolicy, current_bans, record_verdicts
from workers.route_policy import PROBATION_BELOW


def finished_ago(record: UsageRecord, seconds: float) -> UsageRecord:
    finished = datetime.now(UTC) - timedelta(seconds=seconds)
    return record.model_copy(update={"started_at": finished - timedelta(seconds=1), "finished_at": finished})


async def unpaid_of(connection: asyncpg.Connection, nodes: list[str]) -> Decimal:
    total = await connection.fetchval(
        "SELECT sum(payment_far) FROM far_session_contributions WHERE node_id = ANY ($1::text[]) AND paid_at IS NULL",
        nodes,
    )
    return total or Decimal(0)


async def all_balanced(connection: asyncpg.Connection, request_ids: list[str]) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT bool_and(balanced) FROM far_session_balance WHERE request_id = ANY ($1::text[])", request_ids
        )
    )


LEDGER = "postgresql://far_mesh@127.0.0.1:5432/unused"
"""PayoutSettings needs a ledger URL; these tests only read what it says about verification."""


def test_a_cheats_expected_loss_exceeds_its_expected_gain_at_the_configured_sample_rate() -> None:
    settings = PayoutSettings.from_env(postgres_url=LEDGER)
    p, reserve = settings.worker_verify_fraction, settings.reserve_sessions

    # one cheated session paying g: paid g when not sampled; when sampled, slashed g and forfeits the reserve
    assert expected_loss(p, reserve) > expected_gain(p)
    assert reserve > break_even_reserve(p)
    # a node that always cheats from a fresh wallet: caught first at session K ~ Geometric(p); it has then been
    # paid only the sessions older than its reserve, max(0, K - 1 - R), and forfeits the rest and session K
    paid = sum((1 - p) ** (reserve + j) for j in range(1, 10_000))  # E[max(0, K - 1 - R)]
    forfeited = sum((1 - p) ** j for j in range(1, reserve + 1)) + 1  # E[min(K - 1, R)] + 1
    assert forfeited > paid


def test_a_reserve_too_small_for_the_sample_rate_is_refused() -> None:
    with pytest.raises(ValidationError, match="cheating would pay"):
        PayoutSettings(postgres_url=LEDGER, worker_verify_fraction=0.05, payout_reserve_sessions=18)
    with pytest.raises(ValidationError, match="must exceed PAYOUT_VERIFY_MAX_LAG_S"):
        PayoutSettings(postgres_url=LEDGER, payout_verify_max_lag_s=3600, payout_reserve_hold_s=3600)
    assert PayoutSettings(postgres_url=LEDGER, worker_verify_fraction=0.05).reserve_sessions == 20
    assert PayoutSettings(postgres_url=LEDGER, worker_verify_fraction=0.2).reserve_sessions == 5


async def test_a_mismatch_forfeits_every_unpaid_row_of_the_cheats_wallet_once_and_the_books_stay_balanced(
    payouts_db: asyncpg.Connection,
) -> None:
    owner, cheat, mate, stranger = unique_id("owner"), unique_id("cheat"), unique_id("mate"), unique_id("other")
    await register_nodes(payouts_db, [cheat, mate], owner=owner)
    await register_nodes(payouts_db, [stranger])
    earlier = [usage_record(unique_id("req"), {cheat: 2, mate: 1, stranger: 1}) for _ in range(4)]
    convicted = usage_record(unique_id("req"), {cheat: 1, stranger: 1})
    await write_batch(payouts_db, [*earlier, convicted])
    owed = await unpaid_of(payouts_db, [cheat, mate])
    strangers = await unpaid_of(payouts_db, [stranger])

    recorded = await record_verdicts(
        payouts_db, convicted.request_id, convicted.model_id, [verdict(cheat, bad=True), verdict(stranger)]
    )

    assert recorded.slashed == 1 + 4 * 2  # the convicted row, and the wallet's eight other unpaid rows
    assert await unpaid_of(payouts_db, [cheat, mate]) == 0
    assert await unpaid_of(payouts_db, [stranger]) == strangers
    taken = await payouts_db.fetch("SELECT kind, amount_far FROM far_slashes WHERE node_id = ANY ($1)", [cheat, mate])
    assert far_sum(r["amount_far"] for r in taken) == owed
    assert sorted({r["kind"] for r in taken}) == ["forfeit", "slash"]
    assert await all_balanced(payouts_db, [r.request_id for r in [*earlier, convicted]])

    # nothing twice: the same message again, and the pending pass, take nothing more
    again = await record_verdicts(payouts_db, convicted.request_id, convicted.model_id, [verdict(cheat, bad=True)])
    assert again.slashed == 0 and await payouts_db.fetchval("SELECT far_apply_slashes()") == 0
    # earnings after the verdict are the wallet's again (the verdict forfeits what was unpaid when it came)
    later = usage_record(unique_id("req"), {mate: 1})
    await write_batch(payouts_db, [later])
    assert await payouts_db.fetchval("SELECT far_apply_slashes()") == 0
    assert await unpaid_of(payouts_db, [mate]) == later.contributions[0].payment_far


async def test_a_wallets_newest_rows_are_held_as_its_reserve_until_they_are_old(
    payouts_db: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    await register_nodes(payouts_db, [node])
    hold = PayoutHold(max_lag_s=60, reserve_sessions=3, reserve_hold_s=3600)
    recent = [finished_ago(usage_record(unique_id("req"), {node: 1}), 600 + i) for i in range(5)]
    old = finished_ago(usage_record(unique_id("req"), {node: 1}), 2 * 3600)
    await write_batch(payouts_db, [*recent, old])

    batch = await claim_batch(payouts_db, "test", Decimal(0), hold=hold)
    assert batch is not None
    claimed = await payouts_db.fetch(
        "SELECT s.request_id FROM far_session_contributions c JOIN far_mesh_sessions s ON s.id = c.session_id "
        "WHERE c.id = ANY ($1::bigint[])",
        batch.contribution_ids,
    )
    # the three newest wait; the two older recent ones and the one past the reserve's hold are paid
    assert {r["request_id"] for r in claimed} == {recent[3].request_id, recent[4].request_id, old.request_id}
    assert await claim_batch(payouts_db, "test", Decimal(0), hold=hold) is None


async def test_a_new_peer_is_on_probation_below_the_routing_line_until_it_passes_two_checks(
    payouts_db: asyncpg.Connection,
) -> None:
    node = unique_id("new")
    scores = []
    for _ in range(3):
        recorded = await record_verdicts(payouts_db, unique_id("req"), "m", [verdict(node)])
        scores.append(recorded.reputation[node])
    await payouts_db.execute("INSERT INTO far_nodes (node_id) VALUES ($1)", fresh := unique_id("fresh"))
    unchecked = await payouts_db.fetchrow(
        "SELECT reputation, on_probation FROM far_node_reputation WHERE node_id = $1", fresh
    )

    assert unchecked["on_probation"] and unchecked["reputation"] < Decimal(str(PROBATION_BELOW))
    assert scores[0] < Decimal(str(PROBATION_BELOW)) <= scores[1] < scores[2]


async def test_a_ban_follows_the_wallet_to_a_new_peer_id_registered_or_announcing_it(
    payouts_db: asyncpg.Connection,
) -> None:
    owner, first, second = unique_id("owner"), unique_id("cheat"), unique_id("cheat")
    await register_nodes(payouts_db, [first, second], owner=owner)
    policy = BanPolicy(after=2, window_s=3600, cooldown_s=600)
    # two mismatches by two peer ids of one wallet count together
    await record_verdicts(payouts_db, unique_id("req"), "m", [verdict(first, bad=True)], policy)
    recorded = await record_verdicts(payouts_db, unique_id("req"), "m", [verdict(second, bad=True)], policy)
    assert {first, second} <= set(recorded.banned)

    registered_later, announcing = unique_id("reborn"), unique_id("reborn")
    await payouts_db.execute(
        "INSERT INTO far_nodes (node_id, wallet) VALUES ($1, NULL), ($2, $3)",
        registered_later,
        announcing,
        wallet_for(owner),
    )
    await register_nodes(payouts_db, [registered_later], owner=owner)

    bans = await current_bans(payouts_db)
    assert {first, second, registered_later, announcing} <= set(bans)
    # and its rows are not paid while the wallet is banned
    record = finished_ago(usage_record(unique_id("req"), {registered_later: 1}), 30 * 86_400)
    await write_batch(payouts_db, [record])
    assert await claim_batch(payouts_db, "test", Decimal(0), hold=PayoutHold(reserve_sessions=0)) is None


async def test_the_verifier_copies_the_ledgers_wallet_bans_and_new_peers_probation_to_the_workers_redis(
    redis_url: str, migrated_postgres_dsn: str
) -> None:
    from verifier.service import Verifier  # torch: imported only by the test that needs it
    from verifier.settings import VerifierSettings

    settings = VerifierSettings.from_env(redis_url=redis_url, postgres_url=migrated_postgres_dsn)
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=1, max_size=1)
    redis = aioredis.Redis.from_url(redis_url)
    verifier = Verifier(settings, redis, pool)
    owner, cheat, reborn, newcomer = unique_id("owner"), unique_id("cheat"), unique_id("reborn"), unique_id("new")
    try:
        async with pool.acquire() as connection:
            await register_nodes(connection, [cheat], owner=owner)
            for _ in range(2):
                await record_verdicts(connection, unique_id("req"), "m", [verdict(cheat, bad=True)], verifier.policy)
            # later, the same wallet under a new peer id, and a peer nobody has checked, join the swarm
            await connection.execute("INSERT INTO far_nodes (node_id) VALUES ($1), ($2)", reborn, newcomer)
            await register_nodes(connection, [reborn], owner=owner)

        await verifier.refresh_from_ledger()

        assert await redis.zscore(keys.BANNED_NODES, reborn) is not None
        score = await redis.hget(keys.NODE_REPUTATION, newcomer)  # type: ignore[misc]
        assert score is not None and Decimal(score.decode()) < Decimal(str(PROBATION_BELOW))
    finally:
        await pool.close()
        await redis.aclose()
