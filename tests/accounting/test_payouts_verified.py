"""Payouts wait for verification: a row is paid only once its session was verified, or was not sampled and is
older than the verifier's maximum lag, and a verdict that found its row in a failed batch is applied first."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from accounting.ledger import write_batch
from accounting.payable import PayoutHold
from accounting.payouts import claim_batch, mark_failed
from devstack.harness.registrations import register_nodes
from protocol.usage import UsageRecord
from tests.fixtures.ledger import unique_id, usage_record
from tests.verifier.test_ledger import verdict
from verifier.ledger import record_verdicts

LAG = PayoutHold(max_lag_s=900, reserve_sessions=0, reserve_hold_s=86_400)
"""The verifier's maximum lag alone: no reserve, so only verification decides."""


def finished_ago(record: UsageRecord, seconds: float, *, spot_checked: bool) -> UsageRecord:
    finished = datetime.now(UTC) - timedelta(seconds=seconds)
    return record.model_copy(
        update={"started_at": finished - timedelta(seconds=1), "finished_at": finished, "spot_checked": spot_checked}
    )


async def claimed_rows(connection: asyncpg.Connection, hold: PayoutHold = LAG) -> set[str]:
    """The request ids whose rows one claim takes."""
    batch = await claim_batch(connection, "test", Decimal(0), hold=hold)
    if batch is None:
        return set()
    rows = await connection.fetch(
        "SELECT s.request_id FROM far_session_contributions c JOIN far_mesh_sessions s ON s.id = c.session_id "
        "WHERE c.id = ANY ($1::bigint[])",
        batch.contribution_ids,
    )
    return {r["request_id"] for r in rows}


async def test_a_fresh_sampled_row_is_not_claimed_until_its_verdict_is_recorded(
    payouts_db: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    await register_nodes(payouts_db, [node])
    sampled = finished_ago(usage_record(unique_id("req"), {node: 1}), 5, spot_checked=True)
    await write_batch(payouts_db, [sampled])

    assert await claimed_rows(payouts_db) == set()
    await record_verdicts(payouts_db, sampled.request_id, sampled.model_id, [verdict(node)])
    assert await claimed_rows(payouts_db) == {sampled.request_id}


async def test_a_sampled_row_without_a_verdict_is_held_however_old_it_is(payouts_db: asyncpg.Connection) -> None:
    node = unique_id("peer")
    await register_nodes(payouts_db, [node])
    sampled = finished_ago(usage_record(unique_id("req"), {node: 1}), 30 * 86_400, spot_checked=True)
    await write_batch(payouts_db, [sampled])

    assert await claimed_rows(payouts_db) == set()


async def test_an_unsampled_row_is_claimed_only_once_it_is_older_than_the_verifiers_maximum_lag(
    payouts_db: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    await register_nodes(payouts_db, [node])
    fresh = finished_ago(usage_record(unique_id("req"), {node: 1}), LAG.max_lag_s - 60, spot_checked=False)
    old = finished_ago(usage_record(unique_id("req"), {node: 1}), LAG.max_lag_s + 60, spot_checked=False)
    await write_batch(payouts_db, [fresh, old])

    assert await claimed_rows(payouts_db) == {old.request_id}
    assert await claimed_rows(payouts_db) == set()  # the fresh one waits out the lag


async def test_a_mismatch_recorded_while_a_batch_holds_the_row_is_applied_when_the_batch_fails_so_the_cheat_is_unpaid(
    payouts_db: asyncpg.Connection,
) -> None:
    cheat = unique_id("cheat")
    await register_nodes(payouts_db, [cheat])
    record = finished_ago(usage_record(unique_id("req"), {cheat: 1}), LAG.max_lag_s + 60, spot_checked=False)
    await write_batch(payouts_db, [record])
    batch = await claim_batch(payouts_db, "test", Decimal(0), hold=LAG)
    assert batch is not None

    await record_verdicts(payouts_db, record.request_id, record.model_id, [verdict(cheat, bad=True)])
    outcome = "SELECT slash_outcome FROM far_verifications WHERE request_id = $1"
    assert await payouts_db.fetchval(outcome, record.request_id) == "already-claimed"
    await mark_failed(payouts_db, batch.id, "the treasury could not pay")

    assert await payouts_db.fetchval(outcome, record.request_id) == "slashed"
    assert (
        await payouts_db.fetchval("SELECT amount_far FROM far_slashes WHERE node_id = $1", cheat)
        == record.contributions[0].payment_far
    )
    assert await claimed_rows(payouts_db) == set()
    balance = await payouts_db.fetchrow(
        "SELECT balanced FROM far_session_balance WHERE request_id = $1", record.request_id
    )
    assert balance["balanced"]


async def test_a_row_with_a_mismatch_verdict_not_yet_applied_is_never_claimed(payouts_db: asyncpg.Connection) -> None:
    cheat = unique_id("cheat")
    await register_nodes(payouts_db, [cheat])
    record = finished_ago(usage_record(unique_id("req"), {cheat: 1}), 5, spot_checked=True)
    await record_verdicts(payouts_db, record.request_id, record.model_id, [verdict(cheat, bad=True)])
    await write_batch(payouts_db, [record])  # the verdict waits for far_apply_slashes(), the claim does not

    assert await payouts_db.fetchval(
        "SELECT slash_outcome IS NULL FROM far_verifications WHERE request_id = $1", record.request_id
    )
    assert await claimed_rows(payouts_db) == set()
