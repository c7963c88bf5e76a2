"""A sampled session whose check never reached the verifier (its worker died between the usage record and the
check) is recorded unverified, so its providers are paid, but only once no check still waiting can be its own."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from accounting.batch_writer import write_batch
from protocol import keys
from protocol.usage import UsageRecord
from tests.fixtures.ledger import unique_id, usage_record
from verifier.lost_checks import record_lost_checks
from verifier.verdicts import record_unverified

FINISHED = datetime(2020, 1, 1, 12, tzinfo=UTC)  # a day no other test's sessions end on
LOST_AFTER_S = 3600.0


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


def sampled(finished_at: datetime) -> UsageRecord:
    record = usage_record(unique_id("req"), {unique_id("peer"): 1})
    started_at = finished_at - timedelta(seconds=1)
    return record.model_copy(update={"spot_checked": True, "started_at": started_at, "finished_at": finished_at})


async def causes(ledger: asyncpg.Connection, records: list[UsageRecord]) -> dict[str, str]:
    rows = await ledger.fetch(
        "SELECT request_id, cause FROM far_unverified_sessions WHERE request_id = ANY($1)",
        [r.request_id for r in records],
    )
    return {row["request_id"]: row["cause"] for row in rows}


async def test_a_session_whose_check_can_no_longer_come_is_recorded_once_and_no_other(
    ledger: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    lost, noticed, recent = sampled(FINISHED), sampled(FINISHED), sampled(FINISHED + timedelta(minutes=50))
    await write_batch(ledger, [lost, noticed, recent])
    await record_unverified(ledger, noticed.request_id, noticed.model_id, "over-budget", 1)
    now = (FINISHED + timedelta(minutes=90)).timestamp()  # an hour past: what finished by 12:30 can be swept

    waiting_since = int((FINISHED - timedelta(hours=2)).timestamp() * 1000)
    await redis.xadd(keys.VERIFICATION_STREAM, {"check": "{}"}, id=f"{waiting_since}-0")
    assert await record_lost_checks(ledger, redis, LOST_AFTER_S, now=now) == []  # the lost check may be behind it

    await redis.delete(keys.VERIFICATION_STREAM)  # the verifier handled it
    assert await record_lost_checks(ledger, redis, LOST_AFTER_S, now=now) == [lost.request_id]
    assert await causes(ledger, [lost, noticed, recent]) == {
        lost.request_id: "never-published",
        noticed.request_id: "over-budget",
    }
    assert await record_lost_checks(ledger, redis, LOST_AFTER_S, now=now) == []
