"""verifier.verdicts against a real PostgreSQL: verdicts, slashes that payouts cannot claim, bans, balance."""

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from accounting.batch_writer import write_batch
from payouts.batches import _CLAIMABLE as CLAIMABLE  # the payout claim's own condition, so a change shows here
from payouts.payable import PayoutHold
from tests.fixtures.ledger import unique_id, usage_record
from tests.verifier.helpers import verdict
from verifier.verdicts import BanPolicy, add_failed_steps, pending_slashes, record_unverified, record_verdicts
from workers.route_policy import PROBATION_BELOW


async def _with(dsn: str, body):  # type: ignore[no-untyped-def]
    connection = await asyncpg.connect(dsn)
    try:
        return await body(connection)
    finally:
        await connection.close()


def run(dsn: str, body):  # type: ignore[no-untyped-def]
    return asyncio.run(_with(dsn, body))


async def balance_of(connection: asyncpg.Connection, request_id: str) -> asyncpg.Record:
    return await connection.fetchrow("SELECT * FROM far_session_balance WHERE request_id = $1", request_id)


def test_a_mismatch_slashes_the_cheats_row_to_the_treasury_and_the_session_still_balances(
    migrated_postgres_dsn: str,
) -> None:
    honest, cheat, request_id = unique_id("honest"), unique_id("cheat"), unique_id("req")
    record = usage_record(request_id, {honest: 2, cheat: 3}, tokens_generated=7)

    async def body(connection: asyncpg.Connection) -> None:
        await write_batch(connection, [record])
        owed = {c.node_id: c.payment_far for c in record.contributions}
        recorded = await record_verdicts(
            connection, request_id, record.model_id, [verdict(honest), verdict(cheat, bad=True, start=2, end=4)]
        )
        assert (recorded.inserted, recorded.slashed) == (2, 1)
        rows = {
            r["node_id"]: r["payment_far"]
            for r in await connection.fetch(
                "SELECT c.node_id, c.payment_far FROM far_session_contributions c "
                "JOIN far_mesh_sessions s ON s.id = c.session_id WHERE s.request_id = $1",
                request_id,
            )
        }
        assert rows == {honest: owed[honest], cheat: Decimal(0)}
        slash = await connection.fetchrow("SELECT * FROM far_slashes WHERE node_id = $1", cheat)
        assert slash["amount_far"] == owed[cheat] and slash["disposition"] == "treasury"
        evidence = await connection.fetchrow("SELECT * FROM far_verifications WHERE id = $1", slash["verification_id"])
        assert (evidence["request_id"], evidence["first_bad_step"], evidence["max_error"]) == (request_id, 1, 0.4)
        balance = await balance_of(connection, request_id)
        assert balance["balanced"] and balance["slashed_far"] == owed[cheat]
        assert (
            balance["payments_far"] + balance["platform_remainder_far"] + balance["slashed_far"]
            == record.total_cost_far
        )

    run(migrated_postgres_dsn, body)


def test_a_slashed_row_can_never_be_claimed_or_given_its_payment_back(migrated_postgres_dsn: str) -> None:
    cheat, request_id = unique_id("cheat"), unique_id("req")
    record = usage_record(request_id, {cheat: 1})

    async def body(connection: asyncpg.Connection) -> None:
        await write_batch(connection, [record])
        await record_verdicts(connection, request_id, record.model_id, [verdict(cheat, bad=True)])
        row_id = await connection.fetchval("SELECT contribution_id FROM far_slashes WHERE node_id = $1", cheat)
        claimable = await connection.fetchval(  # $2 stands for the claim's minimum, unused here
            "SELECT count(*) FROM far_session_contributions c LEFT JOIN far_node_registrations r "
            f"ON r.node_id = c.node_id WHERE c.id = $1 AND $2::int = 0 AND {CLAIMABLE}",
            row_id,
            0,
            *PayoutHold(reserve_sessions=0).parameters(),
        )
        assert claimable == 0
        with pytest.raises(asyncpg.CheckViolationError, match="slashed"):
            await connection.execute("UPDATE far_session_contributions SET payment_far = 1 WHERE id = $1", row_id)

    run(migrated_postgres_dsn, body)


def test_a_verdict_before_its_session_is_applied_once_the_session_arrives(migrated_postgres_dsn: str) -> None:
    cheat, request_id = unique_id("cheat"), unique_id("req")
    record = usage_record(request_id, {cheat: 1})

    async def body(connection: asyncpg.Connection) -> None:
        early = await record_verdicts(connection, request_id, record.model_id, [verdict(cheat, bad=True)])
        assert early.slashed == 0
        assert await connection.fetchval(
            "SELECT slash_outcome IS NULL FROM far_verifications WHERE request_id = $1", request_id
        )
        await write_batch(connection, [record])
        assert await connection.fetchval("SELECT far_apply_slashes()") >= 1
        assert (
            await connection.fetchval("SELECT slash_outcome FROM far_verifications WHERE request_id = $1", request_id)
            == "slashed"
        )
        assert (await balance_of(connection, request_id))["balanced"]

    run(migrated_postgres_dsn, body)


def test_the_same_message_verified_twice_counts_and_slashes_once(migrated_postgres_dsn: str) -> None:
    honest, cheat, request_id = unique_id("honest"), unique_id("cheat"), unique_id("req")
    record = usage_record(request_id, {honest: 1, cheat: 1})
    verdicts = [verdict(honest), verdict(cheat, bad=True)]

    async def body(connection: asyncpg.Connection) -> None:
        await write_batch(connection, [record])
        await record_verdicts(connection, request_id, record.model_id, verdicts)
        again = await record_verdicts(connection, request_id, record.model_id, verdicts)
        assert (again.inserted, again.slashed) == (0, 0)
        counts = await connection.fetchrow(
            "SELECT verified_ok, verified_mismatches FROM far_nodes WHERE node_id = $1", cheat
        )
        assert tuple(counts) == (0, 1)
        assert (await balance_of(connection, request_id))["balanced"]

    run(migrated_postgres_dsn, body)


def test_a_node_is_banned_after_the_threshold_and_its_reputation_falls(migrated_postgres_dsn: str) -> None:
    honest, cheat = unique_id("honest"), unique_id("cheat")
    policy = BanPolicy(after=2, window_s=3600, cooldown_s=600)

    async def body(connection: asyncpg.Connection) -> None:
        first = await record_verdicts(
            connection, unique_id("req"), "m", [verdict(honest), verdict(cheat, bad=True)], policy
        )
        assert first.banned == {}
        second = await record_verdicts(
            connection, unique_id("req"), "m", [verdict(honest), verdict(cheat, bad=True)], policy
        )
        assert set(second.banned) == {cheat}
        assert second.reputation[honest] > Decimal(str(PROBATION_BELOW)) > second.reputation[cheat]
        row = await connection.fetchrow("SELECT banned FROM far_node_reputation WHERE node_id = $1", cheat)
        assert row["banned"]
        assert await pending_slashes(connection) >= 0

    run(migrated_postgres_dsn, body)


def test_a_row_a_payout_already_claimed_keeps_its_payment_and_the_verdict_says_so(migrated_postgres_dsn: str) -> None:
    cheat, request_id = unique_id("cheat"), unique_id("req")
    record = usage_record(request_id, {cheat: 1})

    async def body(connection: asyncpg.Connection) -> None:
        await write_batch(connection, [record])
        batch = await connection.fetchval(
            "INSERT INTO far_payment_batches (payer, min_far, total_far, wallet_count, row_count) "
            "VALUES ('test', 0, 0, 1, 1) RETURNING id"
        )
        await connection.execute(
            "UPDATE far_session_contributions SET payment_batch_id = $1 WHERE node_id = $2", batch, cheat
        )
        recorded = await record_verdicts(connection, request_id, record.model_id, [verdict(cheat, bad=True)])
        assert recorded.slashed == 0
        outcome = await connection.fetchval(
            "SELECT slash_outcome FROM far_verifications WHERE request_id = $1", request_id
        )
        assert outcome == "already-claimed"
        paid = await connection.fetchval("SELECT payment_far FROM far_session_contributions WHERE node_id = $1", cheat)
        assert paid == record.contributions[0].payment_far
        assert (await balance_of(connection, request_id))["balanced"]

    run(migrated_postgres_dsn, body)


def test_failed_steps_counted_by_workers_lower_a_nodes_reputation(migrated_postgres_dsn: str) -> None:
    flaky, steady = unique_id("flaky"), unique_id("steady")

    async def body(connection: asyncpg.Connection) -> None:
        for node in (flaky, steady):
            await record_verdicts(connection, unique_id("req"), "m", [verdict(node)])
        await add_failed_steps(connection, {flaky: 3})
        await add_failed_steps(connection, {flaky: 2})
        rows = {
            r["node_id"]: r
            for r in await connection.fetch(
                "SELECT node_id, failed_steps, reputation FROM far_node_reputation WHERE node_id = ANY($1)",
                [flaky, steady],
            )
        }
        assert rows[flaky]["failed_steps"] == 5 and rows[steady]["failed_steps"] == 0
        assert rows[flaky]["reputation"] < rows[steady]["reputation"]

    run(migrated_postgres_dsn, body)


def test_a_session_recorded_as_not_verified_counts_for_no_reputation_ban_slash_or_forfeit(
    migrated_postgres_dsn: str,
) -> None:
    """Not verified is no verdict: a node whose sessions all end unverified keeps its standing and its money, even
    under a policy that bans at the first mismatch, and a second record of the same session changes nothing."""
    node = unique_id("node")
    records = [usage_record(unique_id("req"), {node: 1}) for _ in range(3)]
    policy = BanPolicy(after=1, window_s=3600, cooldown_s=600)

    async def body(connection: asyncpg.Connection) -> None:
        await write_batch(connection, records)
        owed = {c.node_id: c.payment_far for c in records[0].contributions}
        for record, cause in zip(records, ("over-budget", "recording-unusable", "unknown-model"), strict=True):
            assert await record_unverified(connection, record.request_id, record.model_id, cause, 1)
        assert not await record_unverified(connection, records[0].request_id, records[0].model_id, "malformed", 0)
        recorded = await record_verdicts(connection, unique_id("req"), "m", [verdict(node)], policy)

        assert recorded.banned == {} and recorded.slashed == 0
        standing = await connection.fetchrow(
            "SELECT verified_ok, verified_mismatches, banned FROM far_node_reputation WHERE node_id = $1", node
        )
        assert tuple(standing) == (1, 0, False)
        assert await connection.fetchval("SELECT count(*) FROM far_slashes WHERE node_id = $1", node) == 0
        assert await connection.fetchval("SELECT far_apply_slashes()") == 0
        payments = await connection.fetch(
            "SELECT c.payment_far FROM far_session_contributions c JOIN far_mesh_sessions s ON s.id = c.session_id "
            "WHERE s.request_id = ANY ($1::text[])",
            [r.request_id for r in records],
        )
        assert [p["payment_far"] for p in payments] == [owed[node]] * 3
        cause = "SELECT cause FROM far_unverified_sessions WHERE request_id = $1"
        assert await connection.fetchval(cause, records[0].request_id) == "over-budget"

    run(migrated_postgres_dsn, body)
