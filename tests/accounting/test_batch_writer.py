from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from accounting.batch_writer import session_id_for, write_batch
from protocol.usage import UsageRecord
from tests.fixtures.ledger import refused_by_the_ledger, unique_id, usage_record


@pytest.fixture
async def ledger(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


async def test_a_batch_stores_each_session_and_one_row_per_contributing_node(ledger: asyncpg.Connection) -> None:
    nodes = [unique_id("peer") for _ in range(3)]
    records = [usage_record(unique_id("req"), {nodes[0]: 4, nodes[1]: 4, nodes[2]: 2}) for _ in range(5)]
    outcome = await write_batch(ledger, records)
    assert (outcome.sessions_written, outcome.contributions_written, outcome.duplicates) == (5, 15, 0)
    rows = await ledger.fetch(
        "SELECT s.request_id, s.total_cost_far, s.platform_remainder_far, s.finalized_at, sum(c.payment_far) AS paid "
        "FROM far_mesh_sessions s JOIN far_session_contributions c ON c.session_id = s.id "
        "WHERE s.request_id = ANY($1) GROUP BY s.id",
        [r.request_id for r in records],
    )
    assert len(rows) == 5
    for row in rows:
        assert row["paid"] + row["platform_remainder_far"] == row["total_cost_far"] == Decimal("0.001")
        assert row["finalized_at"] is not None


async def test_redelivered_and_repeated_records_change_nothing(ledger: asyncpg.Connection) -> None:
    node = unique_id("peer")
    record = usage_record(unique_id("req"), {node: 1})
    first = await write_batch(ledger, [record, record])
    again = await write_batch(ledger, [record])
    assert (first.sessions_written, first.duplicates) == (1, 1)
    assert (again.sessions_written, again.contributions_written, again.duplicates) == (0, 0, 1)
    count = await ledger.fetchval(
        "SELECT count(*) FROM far_session_contributions WHERE session_id = $1", session_id_for(record.request_id)
    )
    assert count == 1


async def test_a_batch_mixing_stored_and_new_records_stores_only_the_new_ones(ledger: asyncpg.Connection) -> None:
    node = unique_id("peer")
    stored = usage_record(unique_id("req"), {node: 1})
    await write_batch(ledger, [stored])
    fresh = [usage_record(unique_id("req"), {node: 1, unique_id("peer"): 2}) for _ in range(3)]
    mixed = await write_batch(ledger, [fresh[0], stored, *fresh[1:]])
    assert (mixed.sessions_written, mixed.contributions_written, mixed.duplicates) == (3, 6, 1)
    rows = await ledger.fetchval(
        "SELECT count(*) FROM far_session_contributions WHERE session_id = ANY($1)",
        [session_id_for(r.request_id) for r in [stored, *fresh]],
    )
    assert rows == 7


async def test_a_record_the_ledger_refuses_is_rejected_alone_and_the_rest_of_its_batch_is_stored(
    ledger: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    good = [usage_record(unique_id("req"), {node: 1}) for _ in range(3)]
    too_big = refused_by_the_ledger(unique_id("req"), node)
    outcome = await write_batch(ledger, [good[0], too_big, good[1], good[2]])
    assert list(outcome.rejected) == [1]
    assert outcome.sessions_written == 3
    stored = await ledger.fetchval(
        "SELECT count(*) FROM far_mesh_sessions WHERE request_id = ANY($1)", [r.request_id for r in good + [too_big]]
    )
    assert stored == 3


def unbalanced(record: UsageRecord, **changes: object) -> UsageRecord:
    """`record` with `changes`, skipping the validation that would refuse it (as a buggy worker's could be)."""
    return UsageRecord.model_construct(**(dict(record) | changes))


async def final_sessions(ledger: asyncpg.Connection, records: list[UsageRecord]) -> int:
    count: int = await ledger.fetchval(
        "SELECT count(*) FROM far_mesh_sessions WHERE request_id = ANY($1) AND finalized_at IS NOT NULL",
        [r.request_id for r in records],
    )
    return count


async def test_a_session_whose_payments_do_not_balance_is_rejected_and_the_rest_is_stored_final(
    ledger: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    good = [usage_record(unique_id("req"), {node: 1, unique_id("peer"): 3}) for _ in range(3)]
    paid_in_full = usage_record(unique_id("req"), {node: 1, unique_id("peer"): 1})
    short = unbalanced(paid_in_full, contributions=paid_in_full.contributions[:1])  # a node's pay went missing
    outcome = await write_batch(ledger, [good[0], short, good[1], good[2]])
    assert list(outcome.rejected) == [1] and "does not balance" in outcome.rejected[1]
    assert (outcome.sessions_written, outcome.contributions_written) == (3, 6)
    assert await final_sessions(ledger, good + [short]) == 3


async def test_a_session_without_contributions_is_stored_final_only_if_its_remainder_is_its_cost(
    ledger: asyncpg.Connection,
) -> None:
    nobody = usage_record(unique_id("req"), {})  # no node did any work: the platform keeps the whole cost
    skimmed = unbalanced(usage_record(unique_id("req"), {}), platform_remainder_far=Decimal(0))
    outcome = await write_batch(ledger, [nobody, skimmed])
    assert list(outcome.rejected) == [1] and "does not balance" in outcome.rejected[1]
    assert outcome.sessions_written == 1
    assert await final_sessions(ledger, [nobody, skimmed]) == 1


async def test_a_record_that_differs_from_the_stored_session_is_a_conflict_never_a_silent_duplicate(
    ledger: asyncpg.Connection,
) -> None:
    """The request id ran twice: dropping the second record as a duplicate would leave its work unbilled."""
    request_id, node = unique_id("req"), unique_id("peer")
    assert (await write_batch(ledger, [usage_record(request_id, {node: 1}, tokens_generated=1)])).sessions_written == 1
    second_run = usage_record(request_id, {node: 1}, tokens_generated=40)
    other = usage_record(unique_id("req"), {node: 1})

    outcome = await write_batch(ledger, [other, second_run])
    assert (outcome.sessions_written, outcome.duplicates) == (1, 0)
    assert list(outcome.conflicts) == [1]
    assert "ran twice" in outcome.conflicts[1] and "tokens_generated" in outcome.conflicts[1]
    stored = await ledger.fetchval("SELECT tokens_generated FROM far_mesh_sessions WHERE request_id = $1", request_id)
    assert stored == 1


async def test_a_later_record_paying_other_nodes_for_a_stored_session_is_a_conflict(ledger: asyncpg.Connection) -> None:
    request_id, node, other_node = unique_id("req"), unique_id("peer"), unique_id("peer")
    assert (await write_batch(ledger, [usage_record(request_id, {node: 1})])).sessions_written == 1
    outcome = await write_batch(ledger, [usage_record(request_id, {other_node: 1})])  # the same session columns
    assert (outcome.duplicates, list(outcome.conflicts)) == (0, [0])
    assert "other contributions" in outcome.conflicts[0]
    assert (await write_batch(ledger, [usage_record(request_id, {node: 1})])).duplicates == 1  # a true redelivery


async def test_two_different_records_for_one_request_id_in_one_batch_are_a_conflict(ledger: asyncpg.Connection) -> None:
    request_id, node = unique_id("req"), unique_id("peer")
    first, second = (usage_record(request_id, {node: 1}, tokens_generated=n) for n in (2, 3))
    outcome = await write_batch(ledger, [first, second, first])
    assert (outcome.sessions_written, outcome.duplicates, list(outcome.conflicts)) == (1, 1, [1])


async def test_a_batch_reports_what_it_billed_by_model_counting_only_the_sessions_it_created(
    ledger: asyncpg.Connection,
) -> None:
    node = unique_id("peer")
    stored = usage_record(unique_id("req"), {node: 1})
    await write_batch(ledger, [stored])
    fresh = [usage_record(unique_id("req"), {node: 1}, tokens_generated=n, model_id="test/other") for n in (3, 4)]
    outcome = await write_batch(ledger, [stored, *fresh, usage_record(unique_id("req"), {node: 1})])
    assert outcome.billed_far == {"test/other": Decimal("0.0007"), "test/model": Decimal("0.001")}
    assert stored.request_id not in outcome.written and {r.request_id for r in fresh} <= outcome.written
