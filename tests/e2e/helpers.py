"""Steps the end-to-end fault tests share: a greedy request that is still streaming when a fault lands, and what
its client and the ledger must hold afterwards (every token once, one session billing exactly those tokens)."""

import uuid
from typing import Any

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
