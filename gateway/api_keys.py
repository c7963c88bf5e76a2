"""API keys: who may spend, and from which wallet. Stored hashed in `far_api_keys`, looked up with a short cache.

The key's format (`fmk_<key_id>_<secret>`) is protocol/api_keys.py's, its storage (the secret's SHA-256 only) and
revocation schema/api_keys.py's, shared with the portal; here keys are verified (the secret compared in constant
time), and issued, listed and revoked for `far-mesh keys`.
"""

import hmac
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from protocol.api_keys import MAX_LABEL_CHARS, format_key, new_key, parse_key
from protocol.wallet import validate_wallet
from schema.api_keys import revoke, secret_hash
from schema.transient import LEDGER_AWAY


class KeyStoreUnavailable(RuntimeError):
    """PostgreSQL did not answer, or the far_api_keys table is missing (run `far-mesh migrate`)."""


LEDGER_UNREACHABLE: tuple[type[Exception], ...] = (*LEDGER_AWAY, asyncpg.PostgresError)
"""What a ledger read raises that answers 503 (`KeyStoreUnavailable`), not 500: the shared transient errors bring
InternalClientError, a pooled connection PostgreSQL left mid-operation (the chaos soak, seed 33)."""


class UnknownKey(LookupError):
    """No active API key has that id."""


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits (schema/0012); None means none of its own: unlimited, or the gateway's setting."""

    max_budget_far: Decimal | None = None
    period_budget_far: Decimal | None = None
    budget_period: str | None = None
    """"day", "week" or "month" (UTC), with period_budget_far."""
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None
    rate_limit_per_minute: int | None = None
    max_concurrent_streams: int | None = None

    @property
    def budgeted(self) -> bool:
        return self.max_budget_far is not None or self.period_budget_far is not None

    @classmethod
    def from_row(cls, row: Any) -> "KeyLimits":
        models = row["allowed_models"]
        return cls(
            max_budget_far=row["max_budget_far"],
            period_budget_far=row["period_budget_far"],
            budget_period=row["budget_period"],
            expires_at=row["expires_at"],
            allowed_models=tuple(models) if models is not None else None,
            rate_limit_per_minute=row["rate_limit_per_minute"],
            max_concurrent_streams=row["max_concurrent_streams"],
        )


LIMIT_COLUMNS = (
    "max_budget_far, period_budget_far, budget_period, expires_at, allowed_models, rate_limit_per_minute, "
    "max_concurrent_streams"
)


@dataclass(frozen=True)
class ApiKey:
    """An active key: the id requests are attributed to, the wallet they are billed to, and its own limits."""

    key_id: str
    wallet: str
    label: str
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key; `secret_key` is shown once and never stored."""

    key: ApiKey
    secret_key: str
    created_at: datetime


class KeyStore:
    """Creates, revokes and verifies keys; `verify` caches rows (and misses) for `cache_s` seconds."""

    def __init__(self, pool: asyncpg.Pool, *, cache_s: float, timeout_s: float, max_cached: int = 10_000) -> None:
        self._pool = pool
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._max_cached = max_cached
        self._cache: dict[str, tuple[float, ApiKey | None, bytes]] = {}

    async def verify(self, presented: str) -> ApiKey | None:
        """The active key `presented` names, or None when it is malformed, unknown, revoked or its secret differs."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            row = await self._fetch(key_id)
            if len(self._cache) >= self._max_cached:
                self._cache.clear()  # bounded memory under a flood of made-up key ids
            api_key = ApiKey(row["key_id"], row["wallet"], row["label"], KeyLimits.from_row(row)) if row else None
            cached = (now + self._cache_s, api_key, bytes(row["secret_hash"]) if row else b"")
            self._cache[key_id] = cached
        _, api_key, stored_hash = cached
        if api_key is None or not hmac.compare_digest(secret_hash(secret), stored_hash):
            return None
        return api_key

    async def _fetch(self, key_id: str) -> Any:
        try:
            return await self._pool.fetchrow(
                f"SELECT key_id, wallet, label, secret_hash, {LIMIT_COLUMNS} FROM far_api_keys "
                "WHERE key_id = $1 AND revoked_at IS NULL",
                key_id,
                timeout=self._timeout_s,  # a flood of made-up key ids must not pile up waiting on the ledger
            )
        except asyncpg.UndefinedTableError as exc:
            raise KeyStoreUnavailable("far_api_keys does not exist; run `far-mesh migrate`") from exc
        except LEDGER_UNREACHABLE as exc:
            raise KeyStoreUnavailable(f"PostgreSQL did not answer: {type(exc).__name__}") from exc


async def create_key(
    connection: asyncpg.Connection, wallet: str, label: str = "", limits: KeyLimits | None = None
) -> IssuedKey:
    """Store a new key for `wallet` (EIP-55, else `InvalidWallet`) with `limits`, and return it with its one-time
    secret. Limits the schema refuses (a period budget without a period, an expiry in the past) are ValueError."""
    validate_wallet(wallet)
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label is {len(label)} characters; at most {MAX_LABEL_CHARS}")
    limits = limits or KeyLimits()
    key_id, secret = new_key()
    try:
        created_at = await connection.fetchval(
            f"INSERT INTO far_api_keys (key_id, secret_hash, wallet, label, {LIMIT_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING created_at",
            key_id,
            secret_hash(secret),
            wallet,
            label,
            limits.max_budget_far,
            limits.period_budget_far,
            limits.budget_period,
            limits.expires_at,
            list(limits.allowed_models) if limits.allowed_models is not None else None,
            limits.rate_limit_per_minute,
            limits.max_concurrent_streams,
        )
    except asyncpg.CheckViolationError as exc:
        raise ValueError(f"limits refused by the ledger ({exc.constraint_name})") from None
    return IssuedKey(ApiKey(key_id, wallet, label, limits), format_key(key_id, secret), created_at)


async def revoke_key(connection: asyncpg.Connection, key_id: str) -> datetime:
    """Revoke `key_id` (schema.api_keys.revoke: a key revoked already keeps its first time); `UnknownKey` when no
    key has that id."""
    revoked_at = await revoke(connection, key_id)
    if revoked_at is None:
        raise UnknownKey(f"no API key with id {key_id!r}")
    return revoked_at


@dataclass(frozen=True)
class KeyRecord:
    """A key as `far-mesh keys list|show` prints it: never its secret, which is not stored."""

    key: ApiKey
    created_at: datetime
    revoked_at: datetime | None
    spent_far: Decimal
    """Everything the ledger has billed to the key."""


async def list_keys(
    connection: asyncpg.Connection, *, wallet: str | None = None, key_id: str | None = None
) -> list[KeyRecord]:
    """Every key (of `wallet`, or just `key_id`), oldest first, with what the ledger billed to each."""
    rows = await connection.fetch(
        f"SELECT k.key_id, k.wallet, k.label, k.created_at, k.revoked_at, {LIMIT_COLUMNS}, "
        "coalesce((SELECT sum(s.total_cost_far) FROM far_mesh_sessions s WHERE s.api_key_id = k.key_id), 0) AS spent "
        "FROM far_api_keys k WHERE ($1::text IS NULL OR k.wallet = $1) AND ($2::text IS NULL OR k.key_id = $2) "
        "ORDER BY k.created_at, k.key_id",
        wallet,
        key_id,
    )
    return [
        KeyRecord(
            ApiKey(row["key_id"], row["wallet"], row["label"], KeyLimits.from_row(row)),
            row["created_at"],
            row["revoked_at"],
            row["spent"],
        )
        for row in rows
    ]
