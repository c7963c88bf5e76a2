"""Migrations before the processes that need them, with no Job to delete on upgrade: the gateway's
`wait-for-migrations` init container, run exactly as rendered, against a real PostgreSQL as far_mesh_gateway."""

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.services import with_database
from schema.migrate import apply_migrations, bundled_migrations
from tests.deploy.manifests import REPO, container_of

Docs = dict[str, list[dict[str, Any]]]


async def execute(dsn: str, sql: str, *args: Any) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


@pytest.fixture
def private_ledger(postgres_admin_dsn: str) -> Iterator[tuple[str, str]]:
    """(owner DSN, far_mesh_gateway login DSN) of a migrated database of this test's own."""
    name = f"far_mesh_order_{uuid.uuid4().hex[:10]}"
    login, password = f"far_mesh_gateway_order_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    asyncio.run(create_database_if_missing(postgres_admin_dsn, name))
    owner = with_database(postgres_admin_dsn, name)
    asyncio.run(apply_migrations(owner))
    asyncio.run(execute(owner, f"CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE far_mesh_gateway"))
    parts = urlsplit(owner)
    gateway = urlunsplit(parts._replace(netloc=f"{login}:{password}@{parts.netloc.rpartition('@')[2]}"))
    yield owner, gateway
    asyncio.run(drop_database(postgres_admin_dsn, name))
    asyncio.run(execute(postgres_admin_dsn, f"DROP ROLE {login}"))


def wait_command(rendered: Docs) -> list[str]:
    container = container_of(rendered["base"], "far-mesh-gateway", "wait-for-migrations")
    assert container["command"][0] == "far-mesh"
    return [sys.executable, "-m", "cli", *container["command"][1:]]


def start_wait(rendered: Docs, dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        wait_command(rendered),
        cwd=REPO,
        env={"POSTGRES_URL": dsn, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def first_line(process: subprocess.Popen[str]) -> str:
    """The first line the waiting loop prints: it has checked once and found something missing, and it prints
    again only after its pause, so the process must still be running now (not a fixed sleep before looking)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "waiting for migrations:" in line, line
    return line


def test_the_gateway_starts_at_once_when_every_migration_of_its_image_is_in(
    rendered: Docs, private_ledger: tuple[str, str]
) -> None:
    _, gateway = private_ledger
    result = subprocess.run(wait_command(rendered), cwd=REPO, env={"POSTGRES_URL": gateway}, timeout=60, text=True)
    assert result.returncode == 0


def test_the_gateway_waits_for_a_missing_migration_and_starts_once_it_is_applied(
    rendered: Docs, private_ledger: tuple[str, str]
) -> None:
    owner, gateway = private_ledger
    latest = bundled_migrations()[-1]
    asyncio.run(execute(owner, "DELETE FROM schema_migrations WHERE name = $1", latest.name))
    process = start_wait(rendered, gateway)
    try:
        first = first_line(process)
        assert process.poll() is None, "it must not start the gateway before the migration is in"
        asyncio.run(
            execute(
                owner, "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", latest.name, latest.checksum
            )
        )
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        output = first + process.stdout.read()
        assert f"waiting for migrations: {latest.name}" in first
        assert gateway.split("@")[0] not in output, "the DSN (with its password) must never be printed"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def test_the_gateway_waits_while_postgresql_does_not_answer(rendered: Docs) -> None:
    process = start_wait(rendered, "postgresql://far_mesh_gateway_login:secret@127.0.0.1:9/far_mesh")
    try:
        first = first_line(process)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        output = first + process.stdout.read()
        process.stdout.close()
    assert "waiting for migrations:" in output and "secret" not in output
