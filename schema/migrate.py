"""Apply the ledger's SQL migrations (`schema/NNNN_name.sql`, shipped as package data) exactly once each.

Every pod may run `far-mesh migrate` at start: a PostgreSQL advisory lock serialises the runners, so the
second one finds everything applied and does nothing. Each applied file is recorded with its SHA-256; a file
changed after it was applied is refused, because the database no longer matches what the file says.
"""

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
ADVISORY_LOCK_KEY = 0x6661725F6D657368  # "far_mesh": one lock for every runner of this schema
"""Session-level advisory lock held while migrating; released on close, even if the runner dies."""

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        TEXT PRIMARY KEY,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The database and the migration files disagree, or a migration failed; nothing after it was applied."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """Every `NNNN_name.sql` in this package, in name order."""
    files = [f for f in resources.files(__package__).iterdir() if MIGRATION_NAME.match(f.name)]
    return [Migration(f.name, f.read_text(encoding="utf-8")) for f in sorted(files, key=lambda f: f.name)]


async def apply_migrations(dsn: str, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is not yet applied, each file in its own transaction; returns the names applied by this call."""
    pending = bundled_migrations() if migrations is None else migrations
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            return await _apply_locked(connection, pending)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await connection.close()


async def missing_migrations(dsn: str) -> list[str]:
    """The migrations this package carries that the ledger has not applied, in name order; reads
    schema_migrations only, so any role granted SELECT on it (the gateway's) may ask."""
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
    finally:
        await connection.close()
    return [m.name for m in bundled_migrations() if m.name not in done]


async def _apply_locked(connection: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await connection.execute(_CREATE_LEDGER)
    applied = {r["name"]: r["checksum"] for r in await connection.fetch("SELECT name, checksum FROM schema_migrations")}
    done: list[str] = []
    for migration in migrations:
        recorded = applied.get(migration.name)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"{migration.name} changed after it was applied (checksum {recorded[:12]} in the database, "
                    f"{migration.checksum[:12]} on disk): restore the file and put the change in a new migration"
                )
            continue
        try:
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", migration.name, migration.checksum
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{migration.name} failed and was rolled back: {exc}") from exc
        log.info("migration applied name=%s", migration.name)
        done.append(migration.name)
    return done
