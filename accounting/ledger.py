"""Writing usage records into the ledger: one transaction per batch, through COPY, duplicates ignored.

Records are COPYed into temporary staging tables, then moved with `INSERT ... ON CONFLICT DO NOTHING`, so a
redelivered record (same request id) changes nothing. A session's id is derived from its request id, which
lets contributions be staged before the session row exists. If a batch breaks a constraint, it is written
again record by record under savepoints: the offenders are returned as rejected, the rest are stored.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from protocol.usage import UsageRecord

log = logging.getLogger(__name__)

SESSION_NAMESPACE = uuid.UUID("5b0f7c0e-6a53-4f44-9b0e-8f6d2a1c3e77")
"""uuid5 namespace of session ids: the same request id always gets the same session id."""

SESSION_COLUMNS = (
    "id",
    "request_id",
    "user_wallet",
    "api_key_id",
    "model_id",
    "status",
    "finish_reason",
    "prompt_tokens",
    "tokens_generated",
    "price_per_token_far",
    "total_cost_far",
    "platform_remainder_far",
    "started_at",
    "finished_at",
    "time_to_first_token_ms",
    "failovers",
    "worker_id",
)
CONTRIBUTION_COLUMNS = (
    "session_id",
    "node_id",
    "wallet",
    "blocks_served",
    "tokens_contributed",
    "work_units",
    "payment_far",
)

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged_sessions (
    id UUID, request_id TEXT, user_wallet TEXT, api_key_id TEXT, model_id TEXT, status TEXT, finish_reason TEXT,
    prompt_tokens BIGINT, tokens_generated BIGINT, price_per_token_far NUMERIC(38,18), total_cost_far NUMERIC(38,18),
    platform_remainder_far NUMERIC(38,18), started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    time_to_first_token_ms DOUBLE PRECISION, failovers INTEGER, worker_id TEXT
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staged_contributions (
    session_id UUID, node_id TEXT, wallet TEXT, blocks_served INTEGER, tokens_contributed BIGINT,
    work_units BIGINT, payment_far NUMERIC(38,18)
) ON COMMIT DELETE ROWS;
"""
_SESSION_LIST = ", ".join(SESSION_COLUMNS)
_CONTRIBUTION_LIST = ", ".join(CONTRIBUTION_COLUMNS)
# Nodes first, in key order, so concurrent consumers take their row locks in the same order (no deadlock).
_INSERT_NODES = """
INSERT INTO far_nodes (node_id, wallet)
SELECT DISTINCT ON (node_id) node_id, wallet FROM staged_contributions ORDER BY node_id
ON CONFLICT (node_id) DO NOTHING
"""
_INSERT_SESSIONS = f"""
INSERT INTO far_mesh_sessions ({_SESSION_LIST}) SELECT {_SESSION_LIST} FROM staged_sessions
ON CONFLICT (request_id) DO NOTHING RETURNING id
"""
_INSERT_CONTRIBUTIONS = f"""
INSERT INTO far_session_contributions ({_CONTRIBUTION_LIST})
SELECT {_CONTRIBUTION_LIST} FROM staged_contributions WHERE session_id = ANY ($1::uuid[])
ON CONFLICT (session_id, node_id) DO NOTHING
"""

RECORD_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    OverflowError,  # a value the column type cannot hold, caught while encoding the COPY
)
"""Errors that belong to a record's data: retrying cannot help, the record goes to the dead letters."""


def session_id_for(request_id: str) -> uuid.UUID:
    return uuid.uuid5(SESSION_NAMESPACE, request_id)


@dataclass
class BatchOutcome:
    sessions_written: int = 0
    contributions_written: int = 0
    duplicates: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    """Index in the batch -> why the ledger refused that record."""


def _session_row(record: UsageRecord) -> tuple[object, ...]:
    return (
        session_id_for(record.request_id),
        record.request_id,
        record.user_wallet,
        record.api_key_id,
        record.model_id,
        record.status,
        record.finish_reason,
        record.prompt_tokens,
        record.tokens_generated,
        record.price_per_token_far,
        record.total_cost_far,
        record.platform_remainder_far,
        record.started_at,
        record.finished_at,
        record.time_to_first_token_ms,
        record.failovers,
        record.worker_id,
    )


def _contribution_rows(record: UsageRecord) -> list[tuple[object, ...]]:
    session_id = session_id_for(record.request_id)
    return [
        (session_id, c.node_id, c.wallet, c.blocks_served, c.tokens_contributed, c.work_units, c.payment_far)
        for c in record.contributions
    ]


async def prepare_connection(connection: asyncpg.Connection) -> None:
    """Create this connection's staging tables (temporary: each connection has its own)."""
    await connection.execute(_CREATE_STAGING)


async def _insert(connection: asyncpg.Connection, records: Sequence[UsageRecord]) -> tuple[int, int]:
    await connection.execute("TRUNCATE staged_sessions, staged_contributions")
    await connection.copy_records_to_table(
        "staged_sessions", records=[_session_row(r) for r in records], columns=SESSION_COLUMNS
    )
    contributions = [row for r in records for row in _contribution_rows(r)]
    if contributions:
        await connection.copy_records_to_table(
            "staged_contributions", records=contributions, columns=CONTRIBUTION_COLUMNS
        )
        await connection.execute(_INSERT_NODES)
    new_ids = [row["id"] for row in await connection.fetch(_INSERT_SESSIONS)]
    written = 0
    if new_ids and contributions:
        status = await connection.execute(_INSERT_CONTRIBUTIONS, new_ids)
        written = int(status.rsplit(" ", 1)[1])
    if new_ids:
        await connection.execute("SELECT far_finalize_sessions($1::uuid[])", new_ids)
    return len(new_ids), written


async def write_batch(connection: asyncpg.Connection, records: Sequence[UsageRecord]) -> BatchOutcome:
    """Store `records` in one transaction; raises only for connection-level trouble (the batch is then retried).

    Records repeating a request id (stored earlier or earlier in this batch) are counted as duplicates.
    """
    unique: list[UsageRecord] = []
    seen: set[str] = set()
    for record in records:
        if record.request_id not in seen:
            seen.add(record.request_id)
            unique.append(record)
    outcome = BatchOutcome(duplicates=len(records) - len(unique))
    try:
        async with connection.transaction():
            sessions, contributions = await _insert(connection, unique)
    except RECORD_ERRORS as exc:
        log.warning("batch refused (%s); writing its %d records one by one", type(exc).__name__, len(unique))
    else:
        outcome.sessions_written, outcome.contributions_written = sessions, contributions
        outcome.duplicates += len(unique) - sessions
        return outcome
    index_of = {id(r): i for i, r in enumerate(records)}
    async with connection.transaction():
        for record in unique:
            try:
                async with connection.transaction():
                    sessions, contributions = await _insert(connection, [record])
            except RECORD_ERRORS as exc:
                outcome.rejected[index_of[id(record)]] = f"{type(exc).__name__}: {exc}"
                continue
            outcome.sessions_written += sessions
            outcome.contributions_written += contributions
            outcome.duplicates += 1 - sessions
    return outcome
