"""Accounting's background loops (the node registry, the pricer): a tick repeated on a schedule over one
PostgreSQL connection, opened when a tick first asks for it and dropped after an outage.

An outage of Redis or PostgreSQL only delays the next tick: these loops run beside the usage consumer, and a
loop that raised would stop the whole process (`accounting.service`) over a refresh that can simply wait.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis

from schema.transient import TRANSIENT_LEDGER_ERRORS

log = logging.getLogger(__name__)

OUTAGES: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    aioredis.RedisError,
    asyncpg.PostgresError,
    *TRANSIENT_LEDGER_ERRORS,  # InternalClientError too: the loop's connection left mid-operation by a restart
)
"""What an unreachable or restarting Redis or PostgreSQL raises."""

Connect = Callable[[], Awaitable[asyncpg.Connection]]
Tick = Callable[[Connect], Awaitable[None]]
"""One round of work; it awaits its argument for the loop's connection, only if it needs one this round."""


async def repeat(what: str, tick: Tick, connect: Connect, interval_s: float) -> None:
    """Run `tick` every `interval_s` until cancelled; `what` names it in the warning an outage logs."""
    connection: asyncpg.Connection | None = None

    async def connected() -> asyncpg.Connection:
        nonlocal connection
        if connection is None or connection.is_closed():
            connection = await connect()
        return connection

    try:
        while True:
            try:
                await tick(connected)
            except OUTAGES as exc:
                log.warning("%s (%s); trying again in %.0fs", what, type(exc).__name__, interval_s)
                if connection is not None:
                    connection.terminate()
                    connection = None
            await asyncio.sleep(interval_s)
    finally:
        if connection is not None:
            connection.terminate()
