"""Which Redis and PostgreSQL `far-mesh dev` uses: the configured ones, the local ones, or embedded ones.

REDIS_URL / POSTGRES_URL win when set (and must answer: a typo should not silently start a second server).
Otherwise the machine's servers on their usual ports are used when they answer, and embedded servers are
started under the state directory when they do not.
"""

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack.postgres_server import EmbeddedPostgres, create_database_if_missing, postgres_answers
from devstack.redis_server import RedisServer, redis_answers

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/far_mesh"


class ServiceUnreachable(RuntimeError):
    """A configured server does not answer."""


@dataclass
class Service:
    url: str
    origin: str
    """"configured", "local" or "embedded": said once at start-up so nobody wonders which database they hit."""
    stop: Callable[[], None] = lambda: None


def resolve_redis(state_dir: Path) -> Service:
    configured = os.environ.get("REDIS_URL")
    if configured:
        if not redis_answers(configured):
            raise ServiceUnreachable("REDIS_URL is set but nothing answers there")
        return Service(configured, "configured")
    if redis_answers(LOCAL_REDIS):
        return Service(LOCAL_REDIS, "local")
    server = RedisServer(state_dir / "redis", durable=True).start()
    return Service(server.url, "embedded", server.stop)


def resolve_postgres(state_dir: Path) -> Service:
    """A DSN whose database exists (created when missing)."""
    configured = os.environ.get("POSTGRES_URL")
    if configured:
        return Service(
            with_database_created(configured, "POSTGRES_URL is set but that server does not answer"), "configured"
        )
    if asyncio.run(postgres_answers(with_database(LOCAL_POSTGRES, "postgres"))):
        return Service(with_database_created(LOCAL_POSTGRES, "local PostgreSQL stopped answering"), "local")
    embedded = EmbeddedPostgres(state_dir / "postgres").start()
    dsn = with_database_created(embedded.dsn("far_mesh"), "embedded PostgreSQL did not answer")
    return Service(dsn, "embedded", embedded.cleanup)


def with_database_created(dsn: str, unreachable: str) -> str:
    """`dsn` once its server answers (ServiceUnreachable with `unreachable` otherwise) and its database exists."""
    name = urlsplit(dsn).path.lstrip("/") or "postgres"
    admin = with_database(dsn, "postgres")
    if not asyncio.run(postgres_answers(admin)):
        raise ServiceUnreachable(unreachable)
    asyncio.run(create_database_if_missing(admin, name))
    return dsn


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials as `dsn`, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))
