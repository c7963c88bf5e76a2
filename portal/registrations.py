"""Registering a node's peer id to a wallet, and moving it to another wallet with its owner's consent.

The rules, in the order they are checked:
1. The statement is one this portal writes, for its own domain and chain id, and recent.
2. Its signature recovers the wallet it names (for a transfer, the current owner's signature on a transfer
   statement, plus the new wallet's on a registration statement): the wallet consents.
3. The node's own libp2p key signed the same registration statement, and that key is the peer id's (the peer
   id is a hash of it; protocol/peer_keys.py): whoever registers a node runs it. This holds for a first
   registration and for a transfer alike. The wallet a node announces in the DHT is never evidence: Petals
   stores a server's record under its peer id unsigned, so anyone can write one naming any wallet.
4. The node is known to the ledger (a swarm snapshot or a contribution named it).
5. The nonces are used up in the same transaction that stores the registration, so a replay fails; the
   event is logged with both signatures (far_node_registration_events, far_node_registration_key_proofs).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from portal import nonces, statements
from portal.errors import BadInput, Forbidden, NotFound, SignatureRefused
from portal.signing import InvalidSignature, normalize_signature, recover_signer
from protocol.node_proof import PROOF_PARAMETER, InvalidNodeProof, NodeProof, b64decode_field
from protocol.peer_keys import PeerKeyRefused, verify_peer_signature

log = logging.getLogger(__name__)
CLOCK_SKEW = timedelta(seconds=60)
_KEEP_NODE_PROOF = """
INSERT INTO far_node_registration_key_proofs (event_id, node_public_key, node_signature)
SELECT max(id), $2, $3 FROM far_node_registration_events WHERE node_id = $1
"""
"""The node's signature beside the registration event it allowed (schema/0017), so it can be verified again."""


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


NODE_KEY_HELP = (
    "run `far-mesh register-node --identity <the node's key file> --portal-url <this portal> --wallet <wallet>` "
    "on the node's machine and open the link it prints"
)


def check_node_signature(
    statement: statements.Statement, text: str, node_signature: str | None, node_public_key: str | None
) -> None:
    """Return if the node's own libp2p key signed `text`; else 403: only the node's operator holds that key."""
    if not node_signature:
        raise Forbidden(
            f"registering node {statement.node_id} needs the node's own signature on the statement, proving its "
            f"operator holds the node's key (the wallet it announces proves nothing): {NODE_KEY_HELP}",
            field="node_signature",
        )
    try:
        signature = b64decode_field(node_signature, "node_signature")
        public_key = b64decode_field(node_public_key, "node_public_key") if node_public_key else None
        verify_peer_signature(statement.node_id, text.encode(), signature, public_key)
    except (InvalidNodeProof, PeerKeyRefused) as exc:
        raise Forbidden(
            f"the node's key did not sign this statement ({exc}); only node {statement.node_id}'s own key can: "
            f"{NODE_KEY_HELP}",
            field="node_signature",
        ) from None


def proof_from_link(encoded: str) -> dict[str, str]:
    """What the register page shows and posts from a node's link: its proof and the statement's node and wallet.

    Only the form of the proof is checked here (422 when broken); the signatures are checked when it is posted.
    """
    try:
        proof = NodeProof.decode(encoded)
        statement = statements.parse(proof.statement, "register")
    except (InvalidNodeProof, statements.InvalidStatement) as exc:
        raise BadInput(f"the registration link is broken ({exc}); {NODE_KEY_HELP}", field=PROOF_PARAMETER) from None
    return proof.as_fields() | {"node_id": statement.node_id, "statement_wallet": statement.wallet}


async def register(
    pool: asyncpg.Pool,
    binding: Binding,
    *,
    statement: str,
    signature: str,
    node_signature: str | None,
    node_public_key: str | None = None,
    owner_statement: str | None = None,
    owner_signature: str | None = None,
) -> RegistrationOutcome:
    """Register (or move) the statement's node to its wallet; `node_signature` is the node key's (base64)."""
    registration = verified("register", statement, signature, binding, "signature")
    check_node_signature(registration, statement, node_signature, node_public_key)
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
            "SELECT r.wallet AS owner FROM far_nodes n "
            "LEFT JOIN far_node_registrations r ON r.node_id = n.node_id WHERE n.node_id = $1",
            registration.node_id,
        )
        if node is None:
            raise NotFound(
                f"node {registration.node_id} has not been seen in the swarm yet; start it, wait a minute, retry",
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
        if outcome != "unchanged":  # the event far_register_node just logged; the node's row lock keeps it ours
            await connection.execute(_KEEP_NODE_PROOF, registration.node_id, node_public_key, node_signature)
    log.info("node registration node_id=%s wallet=%s outcome=%s", registration.node_id, registration.wallet, outcome)
    return RegistrationOutcome(registration.node_id, registration.wallet, str(outcome))
