"""What the ledger holds for given request ids, read straight from PostgreSQL: end-to-end checks and the load test
count sessions and contributions with it."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class LedgerSession:
    row: dict[str, Any]
    contributions: list[dict[str, Any]]


async def ledger_rows(dsn: str, request_ids: Sequence[str]) -> dict[str, list[LedgerSession]]:
    """Every far_mesh_sessions row (with its contributions) of each request id: exactly one is expected."""
    connection = await asyncpg.connect(dsn)
    try:
        sessions = await connection.fetch(
            "SELECT * FROM far_mesh_sessions WHERE request_id = ANY($1::text[])", list(request_ids)
        )
        found: dict[str, list[LedgerSession]] = {r: [] for r in request_ids}
        for session in sessions:
            contributions = await connection.fetch(
                "SELECT * FROM far_session_contributions WHERE session_id = $1 ORDER BY node_id", session["id"]
            )
            found[session["request_id"]].append(LedgerSession(dict(session), [dict(c) for c in contributions]))
        return found
    finally:
        await connection.close()


async def the_ledger_session(dsn: str, request_id: str) -> LedgerSession:
    (session,) = (await ledger_rows(dsn, [request_id]))[request_id]
    return session
