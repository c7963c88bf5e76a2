"""Payouts wait for verification: a row is paid only once its session was verified, or was not sampled (or was
recorded as not verified, through no fault of its servers) and is older than the verifier's maximum lag, and a
verdict that found its row in a failed batch is applied first."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from accounting.batch_writer import write_batch
from devstack.harness.registrations import register_nodes
from payouts.batches import claim_batch, mark_failed
from payouts.payable import PayoutHold
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.usage import UsageRecord
from protocol.verification import RecordedSpan, RecordedStep, SpotCheck
from tests.fixtures.ledger import unique_id, usage_record
from tests.verifier.helpers import PEER_A, FakeServed, Replay, recorded_span, settings, verdict
from verifier.service import Verifier
from verifier.settings import VerifierSettings
from verifier.verdicts import record_unverified, record_verdicts
from workers.spot_checks import begin_trust

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


@pytest.fixture
async def verifier(
    redis: aioredis.Redis, payouts_ledger_dsn: str, tiny_models: tuple[ModelSpec, ...]
) -> AsyncIterator[Verifier]:
    """A verifier of the tiny model over the test's Redis and the payouts' ledger (weights loaded on first use)."""
    config = VerifierSettings.from_env(
        redis_url="redis://unused:1",
        postgres_url=payouts_ledger_dsn,
        far_mesh_models=json.dumps([tiny_models[0].model_dump(mode="json")]),
        default_model_id=tiny_models[0].model_id,
    )
    pool = await asyncpg.create_pool(payouts_ledger_dsn, min_size=1, max_size=1)
    await redis.xgroup_create(keys.VERIFICATION_STREAM, keys.VERIFICATION_CONSUMER_GROUP, id="0", mkstream=True)
    yield Verifier(config, redis, pool)
    await pool.close()


async def verify_all(verifier: Verifier) -> None:
    """Hand the verifier every entry waiting, as its loop does."""
    read = await verifier.redis.xreadgroup(
        keys.VERIFICATION_CONSUMER_GROUP, "test", {keys.VERIFICATION_STREAM: ">"}, count=100
    )
    for entry_id, fields in [entry for _, entries in read for entry in entries]:
        await verifier.handle(entry_id, fields)


async def claimed_nodes(connection: asyncpg.Connection, hold: PayoutHold = LAG) -> set[str]:
    """The nodes whose rows one claim takes."""
    batch = await claim_batch(connection, "test", Decimal(0), hold=hold)
    if batch is None:
        return set()
    rows = await connection.fetch(
        "SELECT node_id FROM far_session_contributions WHERE id = ANY ($1::bigint[])", batch.contribution_ids
    )
    return {r["node_id"] for r in rows}


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


async def test_a_sampled_session_whose_check_was_dropped_over_the_byte_budget_is_paid_once_older_than_the_lag(
    payouts_db: asyncpg.Connection, redis: aioredis.Redis, verifier: Verifier
) -> None:
    """The worker wrote spot_checked before the check would not fit: its notice has the verifier record the session
    as not verified, and the session is then paid exactly as an unsampled one (it used to be held forever)."""
    node = unique_id("peer")
    await register_nodes(payouts_db, [node])
    config = settings(worker_verify_fraction=1.0, worker_verify_min_per_node_hour=0, worker_verify_max_bytes=100)
    fresh = finished_ago(usage_record(unique_id("req"), {node: 1}), LAG.max_lag_s - 60, spot_checked=True)
    old = finished_ago(usage_record(unique_id("req"), {node: 1}), LAG.max_lag_s + 60, spot_checked=True)
    for record in (fresh, old):
        trust = await begin_trust(redis, record.request_id, FakeServed([PEER_A]), config)  # type: ignore[arg-type]
        assert trust.reason == "fraction"
        trust.recorder = Replay([recorded_span(node, payload_bytes=500)])
        await trust.publish(redis, record.request_id, record.model_id)
    await write_batch(payouts_db, [fresh, old])
    assert await claimed_rows(payouts_db) == set()  # no verdict, no notice handled yet: held

    await verify_all(verifier)

    causes = await payouts_db.fetch(
        "SELECT request_id, cause FROM far_unverified_sessions WHERE request_id = ANY ($1::text[])",
        [fresh.request_id, old.request_id],
    )
    assert {(r["request_id"], r["cause"]) for r in causes} == {
        (fresh.request_id, "over-budget"),
        (old.request_id, "over-budget"),
    }
    assert await claimed_rows(payouts_db) == {old.request_id}
    assert await claimed_rows(payouts_db) == set()  # the fresh one waits out the lag, as an unsampled one does
    verdicts = "SELECT count(*) FROM far_verifications WHERE request_id = ANY ($1::text[])"
    assert await payouts_db.fetchval(verdicts, [fresh.request_id, old.request_id]) == 0


def unusable_span(peer: str) -> RecordedSpan:
    """A span whose width the worker recorded wrong (8, not the model's): the worker's fault, not the server's."""
    step = RecordedStep(
        step=0, tokens=1, inputs_dtype="float32", inputs_b64="AAAAAA==", outputs_dtype="float32", outputs_b64="AAAAAA=="
    )
    return RecordedSpan(
        peer_id=peer, start_block=0, end_block=2, hidden_size=8, announced_dtype="float32", steps=(step,)
    )


async def test_a_check_whose_every_span_is_unusable_ends_unverified_and_the_session_is_paid_once_older_than_the_lag(
    payouts_db: asyncpg.Connection, redis: aioredis.Redis, verifier: Verifier, tiny_models: tuple[ModelSpec, ...]
) -> None:
    first, second = unique_id("peer"), unique_id("peer")
    await register_nodes(payouts_db, [first, second])
    record = finished_ago(usage_record(unique_id("req"), {first: 1, second: 1}), LAG.max_lag_s + 60, spot_checked=True)
    record = record.model_copy(update={"model_id": tiny_models[0].model_id})
    check = SpotCheck(
        request_id=record.request_id,
        model_id=tiny_models[0].model_id,
        reason="fraction",
        spans=(unusable_span(first), unusable_span(second)),
    )
    await redis.xadd(keys.VERIFICATION_STREAM, check.to_stream_fields())  # type: ignore[arg-type]
    await write_batch(payouts_db, [record])

    await verify_all(verifier)

    assert (
        await payouts_db.fetchval("SELECT count(*) FROM far_verifications WHERE request_id = $1", record.request_id)
        == 0
    )
    row = await payouts_db.fetchrow(
        "SELECT cause, spans FROM far_unverified_sessions WHERE request_id = $1", record.request_id
    )
    assert tuple(row) == ("recording-unusable", 2)
    assert await claimed_nodes(payouts_db) == {first, second}


async def test_a_mismatch_and_an_unverified_record_of_the_same_session_still_block_the_convicted_row(
    payouts_db: asyncpg.Connection,
) -> None:
    """The honest node's span was unusable, the cheat's a mismatch not yet applied: not verified never outweighs
    convicted."""
    honest, cheat = unique_id("honest"), unique_id("cheat")
    await register_nodes(payouts_db, [honest, cheat])
    record = finished_ago(usage_record(unique_id("req"), {honest: 1, cheat: 1}), LAG.max_lag_s + 60, spot_checked=True)
    await record_verdicts(payouts_db, record.request_id, record.model_id, [verdict(cheat, bad=True)], span_indices=[1])
    await record_unverified(payouts_db, record.request_id, record.model_id, "recording-unusable", 1)
    await write_batch(payouts_db, [record])  # the verdict waits for far_apply_slashes(), the claim does not

    assert await claimed_nodes(payouts_db) == {honest}
    assert await claimed_nodes(payouts_db) == set()
