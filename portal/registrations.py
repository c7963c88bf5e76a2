"""Registering a node's peer id to a wallet, and moving it to another wallet with its owner's consent.

The rules, in the order they are checked:
1. The statement is one this portal writes, for its own domain and chain id, and recent.
2. Its signature recovers the wallet it names (for a transfer, the current owner's signature on a transfer
   statement, plus the new wallet's on a registration statement).
3. The node is known to the ledger (a swarm snapshot or a contribution named it).
4. A first registration must come from the wallet the node announces: its operator started it with
   `--wallet` set to the wallet now signing. The announced wallet alone is never paid (it is a public name
   anyone can write); the two together tie the node's operator to the key holder.
5. The nonces are used up in the same transaction that stores the registration, so a replay fails.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from portal import nonces, statements
from portal.errors import Conflict, Forbidden, NotFound, SignatureRefused
from portal.signing import InvalidSignature, normalize_signature, recover_signer

log = logging.getLogger(__name__)
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class Binding:
    """What signed statements must be bound to: this portal's domain and chain, and how old they may be."""

    domain: str
    chain_id: int
    max_age: timedelta


@dataclass(frozen=True)
class RegistrationOutcome:
    node_id: str
    wallet: str
    outcome: str
    """'registered', 'transferred' or 'unchanged'."""


def new_statement(
    kind: statements.Kind, binding: Binding, *, node_id: str, wallet: str, nonce: str, from_wallet: str | None = None
) -> statements.Statement:
    return statements.Statement(
        kind=kind,
        node_id=node_id,
        wallet=wallet,
        from_wallet=from_wallet,
        domain=binding.domain,
        chain_id=binding.chain_id,
        nonce=nonce,
        issued_at=datetime.now(UTC).replace(microsecond=0),
    )


def verified(kind: statements.Kind, text: str, signature: str, binding: Binding, field: str) -> statements.Statement:
    """The parsed statement if it is bound to this portal, current, and signed by its signer; else 401."""
    try:
        statement = statements.parse(text, kind)
    except statements.InvalidStatement as exc:
        raise SignatureRefused(str(exc), field=field) from None
    if statement.domain != binding.domain:
        raise SignatureRefused(f"the statement is for domain {statement.domain!r}, not {binding.domain!r}", field=field)
    if statement.chain_id != binding.chain_id:
        raise SignatureRefused(
            f"the statement is for chain id {statement.chain_id}, not {binding.chain_id}", field=field
        )
    now = datetime.now(UTC)
    if not now - binding.max_age <= statement.issued_at <= now + CLOCK_SKEW:
        raise SignatureRefused("the statement has expired; ask for a new one", field=field)
    try:
        signer = recover_signer(text, signature)
    except InvalidSignature as exc:
        raise SignatureRefused(str(exc), field=field) from None
    if signer != statement.signer:
        raise SignatureRefused(
            f"signed by {signer}, but the statement needs {statement.signer}'s signature", field=field
        )
    return statement


async def register(
    pool: asyncpg.Pool,
    binding: Binding,
    *,
    statement: str,
    signature: str,
    owner_statement: str | None = None,
    owner_signature: str | None = None,
) -> RegistrationOutcome:
    registration = verified("register", statement, signature, binding, "signature")
    consent = None
    if owner_statement is not None or owner_signature is not None:
        if owner_statement is None or owner_signature is None:
            raise SignatureRefused("a transfer needs both owner_statement and owner_signature", field="owner_signature")
        consent = verified("transfer", owner_statement, owner_signature, binding, "owner_signature")
        if consent.node_id != registration.node_id or consent.wallet != registration.wallet:
            raise SignatureRefused(
                "the owner's transfer names another node or wallet than the registration", field="owner_statement"
            )
    async with pool.acquire() as connection, connection.transaction():
        node = await connection.fetchrow(
            "SELECT n.wallet AS announced, r.wallet AS owner FROM far_nodes n "
            "LEFT JOIN far_node_registrations r ON r.node_id = n.node_id WHERE n.node_id = $1",
            registration.node_id,
        )
        if node is None:
            raise NotFound(
                f"node {registration.node_id} has not been seen in the swarm yet; start it, wait a minute, retry",
                field="node_id",
            )
        if node["owner"] is None and node["announced"] != registration.wallet:
            raise Conflict(
                f"node {registration.node_id} announces wallet {node['announced']}, not {registration.wallet}: "
                f"restart it with --wallet {registration.wallet} before registering it",
                field="node_id",
            )
        if node["owner"] is not None and node["owner"] != registration.wallet and consent is None:
            raise Forbidden(
                f"node {registration.node_id} is registered to {node['owner']}; moving it needs a transfer statement "
                "signed by that wallet",
                field="owner_signature",
            )
        try:
            await nonces.consume(connection, registration.nonce, "register")
            if consent is not None:
                await nonces.consume(connection, consent.nonce, "transfer")
        except nonces.NonceRejected as exc:
            raise SignatureRefused(str(exc), field="signature") from None
        try:
            outcome = await connection.fetchval(
                "SELECT far_register_node($1, $2, $3, $4, $5, $6, $7)",
                registration.node_id,
                registration.wallet,
                statement,
                normalize_signature(signature),
                consent.from_wallet if consent else None,
                owner_statement if consent else None,
                normalize_signature(owner_signature) if consent and owner_signature else None,
            )
        except (asyncpg.InsufficientPrivilegeError, asyncpg.SerializationError, asyncpg.NoDataFoundError) as exc:
            raise Forbidden(str(exc), field="owner_signature") from None
    log.info("node registration node_id=%s wallet=%s outcome=%s", registration.node_id, registration.wallet, outcome)
    return RegistrationOutcome(registration.node_id, registration.wallet, str(outcome))
