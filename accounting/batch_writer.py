"""Writing usage records into the ledger: one transaction per batch, duplicates ignored, offenders set aside.

A batch is three statements: the nodes it names (`ON CONFLICT DO NOTHING`), a binary COPY of its sessions,
inserted final, then a binary COPY straight into `far_session_contributions` of their rows. A batch repeating a
stored request id (a redelivery after a crash) makes the sessions' COPY fail; its sessions then go in from
column arrays with `ON CONFLICT (request_id) DO NOTHING RETURNING id`, and only the rows of the sessions that
statement created are copied, so a redelivered record changes nothing and no staging table is needed.
The contributions' statement trigger checks that every final session they touch balances exactly; sessions
without contributions are checked by `far_finalize_sessions`. A session's id is derived from its request id.
If a batch breaks a constraint, it is written again record by record under savepoints: the offenders are
returned as rejected, the rest are stored. Each session created is charged in the journal in the same
transaction (`far_post_session_charges`, schema/0022: the buyer debited its cost, providers' payables, the
platform's fee and the remainder credited), so a session and its charge are stored together, once.

A record repeating a stored request id is a duplicate only if it says what the stored session says (a
redelivery is byte for byte the same record). One that differs means the request id ran twice: it is returned
as a conflict, never dropped in silence, because the work it bills would otherwise go unpaid.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from protocol.money import far_sum
from protocol.usage import UsageRecord

log = logging.getLogger(__name__)

SESSION_NAMESPACE = uuid.UUID("5b0f7c0e-6a53-4f44-9b0e-8f6d2a1c3e77")
"""uuid5 namespace of session ids: the same request id always gets the same session id."""

SESSION_COLUMNS = {
    "id": "uuid",
    "request_id": "text",
    "user_wallet": "text",
    "api_key_id": "text",
    "model_id": "text",
    "status": "text",
    "finish_reason": "text",
    "prompt_tokens": "bigint",
    "tokens_generated": "bigint",
    "price_per_token_far": "numeric",
    "prompt_price_per_token_far": "numeric",
    "total_cost_far": "numeric",
    "platform_fee_bps": "integer",
    "platform_fee_far": "numeric",
    "platform_remainder_far": "numeric",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "time_to_first_token_ms": "double precision",
    "failovers": "integer",
    "worker_id": "text",
    "spot_checked": "boolean",
}
"""Column -> type of the session rows the consumer writes (the order of `session_row`)."""
CONTRIBUTION_COLUMNS = (
    "session_id",
    "node_id",
    "wallet",
    "blocks_served",
    "tokens_contributed",
    "work_units",
    "payment_far",
    "paid_work_units",
)

# Nodes first, in key order, so concurrent consumers take their row locks in the same order (no deadlock).
_INSERT_NODES = """
INSERT INTO far_nodes (node_id, wallet) SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1
ON CONFLICT (node_id) DO NOTHING
"""
# Sessions go in final: the statement trigger at the end of their contributions' COPY holds a final session to
# the exact balance (schema/0004), so a batch that does not balance is rolled back whole, as before.
_SESSION_COPY_COLUMNS = (*SESSION_COLUMNS, "finalized_at")
_INSERT_SESSIONS = (
    f"INSERT INTO far_mesh_sessions ({', '.join(SESSION_COLUMNS)}, finalized_at) "
    f"SELECT *, now() FROM unnest({', '.join(f'${i}::{t}[]' for i, t in enumerate(SESSION_COLUMNS.values(), 1))}) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING id"
)

RECORD_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    OverflowError,  # a value the column type cannot hold, caught while encoding the parameters or the COPY
)
"""Errors that belong to a record's data: retrying cannot help, the record goes to the dead letters."""


def session_id_for(request_id: str) -> uuid.UUID:
    return uuid.uuid5(SESSION_NAMESPACE, request_id)


_STORED_SESSIONS = f"""
SELECT {", ".join(c for c in SESSION_COLUMNS if c != "id")} FROM far_mesh_sessions WHERE request_id = ANY($1::text[])
"""
# The work each stored contribution records (not its wallet or payment, which registrations and verdicts change).
_STORED_WORK = """
SELECT s.request_id, c.node_id, c.blocks_served, c.tokens_contributed, c.work_units, c.paid_work_units
  FROM far_session_contributions c JOIN far_mesh_sessions s ON s.id = c.session_id
 WHERE s.request_id = ANY($1::text[])
"""


@dataclass
class BatchOutcome:
    sessions_written: int = 0
    contributions_written: int = 0
    duplicates: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    """Index in the batch -> why the ledger refused that record."""
    conflicts: dict[int, str] = field(default_factory=dict)
    """Index in the batch -> how that record differs from the session stored under its request id."""
    billed_far: dict[str, Decimal] = field(default_factory=dict)
    """Model id -> the total cost of the sessions this batch created (for the FAR-billed metric, after commit)."""
    written: set[str] = field(default_factory=set)
    """The request ids whose sessions this batch created."""


def session_row(record: UsageRecord, session_id: uuid.UUID) -> tuple[object, ...]:
    return (
        session_id,
        record.request_id,
        record.user_wallet,
        record.api_key_id,
        record.model_id,
        record.status,
        record.finish_reason,
        record.prompt_tokens,
        record.tokens_generated,
        record.price_per_token_far,
        record.prompt_price_per_token_far,
        record.total_cost_far,
        record.platform_fee_bps,
        record.platform_fee_far,
        record.platform_remainder_far,
        record.started_at,
        record.finished_at,
        record.time_to_first_token_ms,
        record.failovers,
        record.worker_id,
        record.spot_checked,
    )


def contribution_rows(record: UsageRecord, session_id: uuid.UUID) -> list[tuple[object, ...]]:
    return [
        (
            session_id,
            c.node_id,
            c.wallet,
            c.blocks_served,
            c.tokens_contributed,
            c.work_units,
            c.payment_far,
            c.paid_work_units,
        )
        for c in record.contributions
    ]


Work = frozenset[tuple[object, ...]]
"""A session's contributions as (node, blocks, tokens, work units, paid work units), in no order."""


def _work(record: UsageRecord) -> Work:
    return frozenset(
        (c.node_id, c.blocks_served, c.tokens_contributed, c.work_units, c.paid_work_units)
        for c in record.contributions
    )


def _difference(record: UsageRecord, stored: Sequence[object], stored_work: Work) -> str | None:
    """How `record` differs from a stored session row (its columns but `id`, in order) and the work its
    contributions record; None when it does not."""
    mine = session_row(record, uuid.UUID(int=0))[1:]
    changed = [name for name, a, b in zip(list(SESSION_COLUMNS)[1:], mine, stored, strict=True) if a != b]
    if _work(record) != stored_work:
        changed.append("contributions")
    if not changed:
        return None
    return f"request_id {record.request_id!r} is stored with other {', '.join(changed)}: the request ran twice"


async def _conflicts(connection: asyncpg.Connection, records: Sequence[UsageRecord]) -> dict[str, str]:
    """Request id -> how the record differs from the session stored under it, for each record that differs."""
    request_ids = [r.request_id for r in records]
    stored = {row["request_id"]: tuple(row) for row in await connection.fetch(_STORED_SESSIONS, request_ids)}
    work: dict[str, set[tuple[object, ...]]] = {}
    for row in await connection.fetch(_STORED_WORK, request_ids):
        work.setdefault(row["request_id"], set()).add(tuple(row)[1:])
    found = {}
    for record in records:
        if record.request_id not in stored:
            continue
        difference = _difference(record, stored[record.request_id], frozenset(work.get(record.request_id, ())))
        if difference is not None:
            found[record.request_id] = difference
    return found


async def _insert(
    connection: asyncpg.Connection, records: Sequence[UsageRecord]
) -> tuple[list[UsageRecord], int, dict[str, str]]:
    """Store what `records` add; returns (the records whose sessions it created, contribution rows written,
    conflicts by request id)."""
    session_ids = [session_id_for(r.request_id) for r in records]
    wallets: dict[str, str | None] = {}
    for record in records:
        for contribution in record.contributions:
            wallets.setdefault(contribution.node_id, contribution.wallet)
    if wallets:
        nodes = sorted(wallets)
        await connection.execute(_INSERT_NODES, nodes, [wallets[n] for n in nodes])
    created = await _insert_sessions(connection, records, session_ids)
    repeated = [r for r, session_id in zip(records, session_ids, strict=True) if session_id not in created]
    conflicts = await _conflicts(connection, repeated) if repeated else {}
    if not created:
        return [], 0, conflicts
    contributions: list[tuple[object, ...]] = []
    without_contributions: list[uuid.UUID] = []
    for record, session_id in zip(records, session_ids, strict=True):
        if session_id in created:
            if record.contributions:
                contributions += contribution_rows(record, session_id)
            else:
                without_contributions.append(session_id)
    if contributions:
        # Only sessions this statement created: none of their rows can exist yet, so plain COPY is safe.
        await connection.copy_records_to_table(
            "far_session_contributions", records=contributions, columns=CONTRIBUTION_COLUMNS
        )
    if without_contributions:  # no COPY checks these: the remainder alone must be the cost
        await connection.execute("SELECT far_finalize_sessions($1::uuid[])", without_contributions)
    # Each created session's charge in the journal, in this transaction: once per session (schema/0022)
    await connection.execute("SELECT far_post_session_charges($1::uuid[])", [i for i in session_ids if i in created])
    fresh = [r for r, session_id in zip(records, session_ids, strict=True) if session_id in created]
    return fresh, len(contributions), conflicts


async def _insert_sessions(
    connection: asyncpg.Connection, records: Sequence[UsageRecord], session_ids: list[uuid.UUID]
) -> set[uuid.UUID]:
    """Insert the sessions, final; returns the ids of those this call created (the others were stored before).

    COPY first, under a savepoint: it costs PostgreSQL about a third less than the conflict-checking INSERT from
    arrays, and encoding its rows costs this process less than encoding the arrays. The INSERT runs only for a
    batch that repeats a stored request id. `finalized_at` is this process's clock, as the INSERT's `now()` was
    the ledger's.
    """
    finalized_at = datetime.now(UTC)
    rows = [(*session_row(r, i), finalized_at) for r, i in zip(records, session_ids, strict=True)]
    try:
        async with connection.transaction():
            await connection.copy_records_to_table("far_mesh_sessions", records=rows, columns=_SESSION_COPY_COLUMNS)
        return set(session_ids)
    except asyncpg.UniqueViolationError:
        pass
    columns = zip(*(row[:-1] for row in rows), strict=True)
    return {row[0] for row in await connection.fetch(_INSERT_SESSIONS, *columns)}


async def write_batch(connection: asyncpg.Connection, records: Sequence[UsageRecord]) -> BatchOutcome:
    """Store `records` in one transaction; raises only for connection-level trouble (the batch is then retried).

    Records repeating a request id (stored earlier or earlier in this batch) are counted as duplicates.
    """
    unique: list[UsageRecord] = []
    first: dict[str, UsageRecord] = {}
    outcome = BatchOutcome()
    index_of = {id(r): i for i, r in enumerate(records)}
    for record in records:
        earlier = first.setdefault(record.request_id, record)
        if earlier is record:
            unique.append(record)
        elif earlier != record:
            outcome.conflicts[index_of[id(record)]] = (
                f"request_id {record.request_id!r} appears twice in one batch with different records: it ran twice"
            )
        else:
            outcome.duplicates += 1
    if not unique:
        return outcome
    try:
        async with connection.transaction():
            created, contributions, conflicts = await _insert(connection, unique)
    except RECORD_ERRORS as exc:
        log.warning("batch refused (%s); writing its %d records one by one", type(exc).__name__, len(unique))
    else:
        outcome.sessions_written, outcome.contributions_written = len(created), contributions
        _count_repeats(outcome, unique, len(created), conflicts, index_of)
        _count_billed(outcome, created)
        return outcome
    async with connection.transaction():
        for record in unique:
            try:
                async with connection.transaction():
                    created, contributions, conflicts = await _insert(connection, [record])
            except RECORD_ERRORS as exc:
                outcome.rejected[index_of[id(record)]] = f"{type(exc).__name__}: {exc}"
                continue
            outcome.sessions_written += len(created)
            outcome.contributions_written += contributions
            _count_repeats(outcome, [record], len(created), conflicts, index_of)
            _count_billed(outcome, created)
    return outcome


def _count_billed(outcome: BatchOutcome, created: Sequence[UsageRecord]) -> None:
    """Add the cost of each record whose session was created to its model's total."""
    for record in created:
        outcome.written.add(record.request_id)
        total = outcome.billed_far.get(record.model_id, Decimal(0))
        outcome.billed_far[record.model_id] = far_sum([total, record.total_cost_far])


def _count_repeats(
    outcome: BatchOutcome,
    written: Sequence[UsageRecord],
    sessions: int,
    conflicts: dict[str, str],
    index_of: dict[int, int],
) -> None:
    """Records of `written` that created no session are duplicates, or conflicts when they differ."""
    for record in written:
        if record.request_id in conflicts:
            outcome.conflicts[index_of[id(record)]] = conflicts[record.request_id]
    outcome.duplicates += len(written) - sessions - sum(r.request_id in conflicts for r in written)
