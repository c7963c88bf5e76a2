"""Steps the end-to-end fault tests share: a greedy request that is still streaming when a fault lands, the
process to kill for it and its restart, and what its client and the ledger must hold afterwards (every token once,
one session billing exactly those tokens)."""

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from devstack.supervisor import Child
from protocol import keys
from tests.fixtures.system import SystemUnderTest, assert_books_balance, ledger_rows, token_events, wait_until_accounted

PROMPT = "A request walks through the gateway"
LONG = 120
"""Tokens of a request that is still streaming when the fault lands (a few seconds on the tiny model)."""


def new_request_id() -> str:
    return f"fault-{uuid.uuid4().hex[:12]}"


def greedy(request_id: str, max_tokens: int = LONG) -> dict[str, Any]:
    return {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "request_id": request_id}


async def assert_exactly_once_in_the_ledger(sut: SystemUnderTest, streams: dict[str, list[dict[str, Any]]]) -> None:
    """Accounting settles; each request has one session row billing exactly the tokens its client received."""
    await wait_until_accounted(sut.redis_url)
    rows = await ledger_rows(sut.postgres_url, list(streams))
    for request_id, events in streams.items():
        (session,) = rows[request_id]
        assert session.row["tokens_generated"] == events[-1]["tokens_generated"]
        assert_books_balance(session, len(token_events(events)))


def assert_complete_once(events: list[dict[str, Any]], expected: list[int]) -> None:
    tokens = token_events(events)
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert [t["token_id"] for t in tokens] == expected
    assert sum("token" not in e for e in events) == 1
    assert events[-1].get("status") == "completed" and events[-1]["tokens_generated"] == len(expected)


def kill_group(child: Child) -> None:
    """SIGKILL a supervised process and everything it started, as a crash or the OOM killer would."""
    os.killpg(child.process.pid, signal.SIGKILL)
    child.process.wait(10)


@asynccontextmanager
async def killed_then_restarted(sut: SystemUnderTest, name: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.to_thread(sut.restart_process, name)


async def worker_running(sut: SystemUnderTest, request_id: str) -> Child:
    """The supervised worker whose run holds `request_id`'s lease (owner = "<host>-<pid>:<try>:<nonce>")."""
    redis = aioredis.Redis.from_url(sut.redis_url, decode_responses=True)
    try:
        owner = await redis.get(keys.job_lease(request_id))
    finally:
        await redis.aclose()
    assert owner is not None, f"{request_id} has no lease: no worker runs it"
    pid = int(owner.partition(":")[0].rpartition("-")[2])
    return next(c for c in sut.system.supervisor.children if c.process.pid == pid)
