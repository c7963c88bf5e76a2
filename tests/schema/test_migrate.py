import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.services import with_database
from schema.migrate import Migration, MigrationError, apply_migrations, bundled_migrations


@pytest.fixture
async def empty_dsn(postgres_admin_dsn: str) -> AsyncIterator[str]:
    name = f"far_mesh_migrate_{uuid.uuid4().hex[:12]}"
    await create_database_if_missing(postgres_admin_dsn, name)
    yield with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


def test_migrations_ship_as_package_data_in_order() -> None:
    names = [m.name for m in bundled_migrations()]
    assert names[0] == "0001_ledger.sql"
    assert names == sorted(names)


async def test_migrations_apply_from_empty_then_reapply_as_a_no_op(empty_dsn: str) -> None:
    applied = await apply_migrations(empty_dsn)
    assert applied == [m.name for m in bundled_migrations()]
    assert await apply_migrations(empty_dsn) == []
    connection = await asyncpg.connect(empty_dsn)
    try:
        tables = {
            r["relname"] for r in await connection.fetch("SELECT relname FROM pg_class WHERE relkind IN ('r','v')")
        }
        recorded = await connection.fetchval("SELECT count(*) FROM schema_migrations")
        unproven = await connection.fetch("SELECT conname FROM pg_constraint WHERE NOT convalidated")
    finally:
        await connection.close()
    assert {
        "far_mesh_sessions",
        "far_nodes",
        "far_node_models",
        "far_session_contributions",
        "far_payment_batches",
        "active_far_nodes",
        "node_earnings_summary",
    } <= tables
    assert recorded == len(applied)
    assert unproven == []  # a check added NOT VALID is validated by a later migration


async def test_concurrent_runners_apply_each_migration_exactly_once(empty_dsn: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_dsn) for _ in range(4)))
    applied = sorted(name for result in results for name in result)
    assert applied == sorted(m.name for m in bundled_migrations())


async def test_a_migration_changed_after_it_was_applied_is_refused(empty_dsn: str) -> None:
    first = Migration("0001_first.sql", "CREATE TABLE t (x int);")
    assert await apply_migrations(empty_dsn, [first]) == ["0001_first.sql"]
    with pytest.raises(MigrationError, match="0001_first.sql changed after it was applied"):
        await apply_migrations(empty_dsn, [Migration("0001_first.sql", "CREATE TABLE t (x bigint);")])


async def test_a_failing_migration_is_rolled_back_and_stops_the_run(empty_dsn: str) -> None:
    good = Migration("0001_good.sql", "CREATE TABLE good (x int);")
    bad = Migration("0002_bad.sql", "CREATE TABLE half (x int); SELECT no_such_function();")
    later = Migration("0003_later.sql", "CREATE TABLE later (x int);")
    with pytest.raises(MigrationError, match="0002_bad.sql failed"):
        await apply_migrations(empty_dsn, [good, bad, later])
    connection = await asyncpg.connect(empty_dsn)
    try:
        present = {r["relname"] for r in await connection.fetch("SELECT relname FROM pg_class WHERE relkind = 'r'")}
    finally:
        await connection.close()
    assert "good" in present and "half" not in present and "later" not in present
