"""Node ownership (schema/0009, portal/registrations.py): a peer id is paid to the wallet that registered it.

The wallet a node announces in the DHT is a hint anyone can write; only a statement naming the peer id, signed
by the wallet and by the node's own libp2p key, makes its earnings payable, and only the owner's signature (with
the node's) moves them to another wallet. tests/portal/test_node_key_registration.py has the node key's side
over HTTP; here every node has a key (`known_node`) and `register` adds its signature as the launcher would.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from mesh.node_registration import NodeKey
from portal import nonces, registrations, statements
from portal.errors import Forbidden, NotFound, SignatureRefused
from portal.registrations import Binding, RegistrationOutcome, new_statement
from tests.fixtures.ledger import unique_id
from tests.fixtures.node_keys import ed25519_node_key, known_keyed_node, node_proof
from tests.fixtures.portal import PORTAL_HOST, SigningWallet, seed_earnings

BINDING = Binding(domain=PORTAL_HOST, chain_id=31337, max_age=timedelta(minutes=5))
ALICE, BOB, MALLORY = SigningWallet.named("alice"), SigningWallet.named("bob"), SigningWallet.named("mallory")

# What payouts/batches.py's claim reads, pointed at the view: the rows payable now, per paid wallet.
OWED_BY_WALLET = """
SELECT wallet, sum(payment_far) AS owed FROM far_payable_contributions
WHERE paid_at IS NULL AND payment_batch_id IS NULL AND wallet IS NOT NULL AND payment_far > 0 AND node_id = ANY($1)
GROUP BY wallet
"""


NODE_KEYS: dict[str, NodeKey] = {}
"""The private key of every node these tests made, by peer id: what each node's operator holds."""


async def known_node(ledger: asyncpg.Connection, announced_wallet: str | None) -> str:
    """A node with its own key, known to the registry and announcing `announced_wallet`."""
    key = ed25519_node_key()
    NODE_KEYS[key.peer_id] = key
    return await known_keyed_node(ledger, key, announced_wallet)


async def register(
    pool: asyncpg.Pool, binding: Binding, *, statement: str, signature: str, node_signs: bool = True, **owner: str
) -> RegistrationOutcome:
    """`portal.registrations.register` with the node's own signature on the statement, as the launcher makes it."""
    node_id = statements.parse(statement, "register").node_id
    proof = node_proof(NODE_KEYS[node_id], statement) if node_signs else None
    return await registrations.register(
        pool,
        binding,
        statement=statement,
        signature=signature,
        node_signature=proof.node_signature if proof else None,
        node_public_key=proof.node_public_key if proof else None,
        **owner,
    )


@pytest.fixture
async def pool(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def signed(
    pool: asyncpg.Pool, wallet: SigningWallet, node_id: str, *, kind: str = "register", to: str | None = None
) -> tuple[str, str]:
    """A fresh statement from the portal, and `wallet`'s signature on it."""
    nonce = await nonces.issue(pool, "register" if kind == "register" else "transfer", timedelta(minutes=5))
    if kind == "register":
        statement = new_statement("register", BINDING, node_id=node_id, wallet=wallet.address, nonce=nonce)
    else:
        assert to is not None
        statement = new_statement(
            "transfer", BINDING, node_id=node_id, wallet=to, nonce=nonce, from_wallet=wallet.address
        )
    text = statement.text()
    return text, wallet.personal_sign(text)


async def test_a_node_registered_by_the_wallet_it_announces_is_paid_there(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    node = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, node)
    outcome = await register(pool, BINDING, statement=statement, signature=signature)
    assert (outcome.node_id, outcome.wallet, outcome.outcome) == (node, ALICE.address, "registered")
    assert await ledger.fetchval("SELECT far_registered_wallet($1)", node) == ALICE.address
    events = await ledger.fetch(
        "SELECT wallet, previous_wallet, statement FROM far_node_registration_events WHERE node_id = $1", node
    )
    assert [(e["wallet"], e["previous_wallet"], e["statement"]) for e in events] == [(ALICE.address, None, statement)]


async def test_the_wallet_a_node_announces_gains_nothing_without_the_nodes_key(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    """A DHT record names Mallory's wallet for Alice's node: its earnings are held, and Mallory cannot register it."""
    node = await known_node(ledger, MALLORY.address)
    await seed_earnings(ledger, {node: 1}, sessions=3)
    await ledger.execute("UPDATE far_session_contributions SET wallet = $2 WHERE node_id = $1", node, MALLORY.address)
    assert await ledger.fetch(OWED_BY_WALLET, [node]) == []
    held = await ledger.fetchrow(
        "SELECT announced_wallets, unclaimed_far FROM far_unclaimed_earnings WHERE node_id = $1", node
    )
    assert held["announced_wallets"] == [MALLORY.address] and held["unclaimed_far"] > 0

    statement, signature = await signed(pool, MALLORY, node)
    with pytest.raises(Forbidden, match="node's own signature"):
        await register(pool, BINDING, statement=statement, signature=signature, node_signs=False)
    assert await ledger.fetch(OWED_BY_WALLET, [node]) == []

    statement, signature = await signed(pool, ALICE, node)  # Alice runs the node: its key signs with her wallet
    await register(pool, BINDING, statement=statement, signature=signature)
    owed = await ledger.fetch(OWED_BY_WALLET, [node])
    assert [(r["wallet"], r["owed"]) for r in owed] == [(ALICE.address, held["unclaimed_far"])]
    assert await ledger.fetchval("SELECT count(*) FROM far_unclaimed_earnings WHERE node_id = $1", node) == 0


async def test_earnings_are_paid_to_the_registered_wallet_whatever_the_rows_announced(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    node = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, node)
    await register(pool, BINDING, statement=statement, signature=signature)
    await seed_earnings(ledger, {node: 1}, sessions=2)
    # a later DHT record (anyone can write one) announces Mallory's wallet for the same peer id
    await ledger.execute("UPDATE far_session_contributions SET wallet = $2 WHERE node_id = $1", node, MALLORY.address)
    owed = await ledger.fetch(OWED_BY_WALLET, [node])
    assert [r["wallet"] for r in owed] == [ALICE.address]


async def test_moving_a_node_needs_its_owners_signature(pool: asyncpg.Pool, ledger: asyncpg.Connection) -> None:
    node = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, node)
    await register(pool, BINDING, statement=statement, signature=signature)
    await seed_earnings(ledger, {node: 1}, sessions=1)

    statement, signature = await signed(pool, BOB, node)
    with pytest.raises(Forbidden, match="registered to"):
        await register(pool, BINDING, statement=statement, signature=signature)

    forged_consent, forged_signature = await signed(pool, MALLORY, node, kind="transfer", to=BOB.address)
    with pytest.raises(SignatureRefused, match="signature"):
        # Mallory signs a transfer that claims to come from Alice's wallet
        await register(
            pool,
            BINDING,
            statement=statement,
            signature=signature,
            owner_statement=forged_consent.replace(MALLORY.address, ALICE.address),
            owner_signature=forged_signature,
        )

    consent, consent_signature = await signed(pool, ALICE, node, kind="transfer", to=BOB.address)
    statement, signature = await signed(pool, BOB, node)
    outcome = await register(
        pool,
        BINDING,
        statement=statement,
        signature=signature,
        owner_statement=consent,
        owner_signature=consent_signature,
    )
    assert outcome.outcome == "transferred"
    assert [r["wallet"] for r in await ledger.fetch(OWED_BY_WALLET, [node])] == [BOB.address]
    previous = await ledger.fetchval(
        "SELECT previous_wallet FROM far_node_registration_events WHERE node_id = $1 ORDER BY id DESC LIMIT 1", node
    )
    assert previous == ALICE.address


async def test_a_signed_statement_registers_once(pool: asyncpg.Pool, ledger: asyncpg.Connection) -> None:
    node = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, node)
    await register(pool, BINDING, statement=statement, signature=signature)
    with pytest.raises(SignatureRefused, match="already used"):
        await register(pool, BINDING, statement=statement, signature=signature)


async def test_statements_for_another_portal_chain_or_time_are_refused(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    node = await known_node(ledger, ALICE.address)
    nonce = await nonces.issue(pool, "register", timedelta(minutes=5))
    good = new_statement("register", BINDING, node_id=node, wallet=ALICE.address, nonce=nonce)
    cases = {
        "domain": good.text().replace(f"Domain: {PORTAL_HOST}", "Domain: evil.example"),
        "chain id": good.text().replace("Chain ID: 31337", "Chain ID: 1"),
        "expired": good.text().replace(
            good.text().split("Issued At: ")[1],
            (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        ),
    }
    for reason, text in cases.items():
        with pytest.raises(SignatureRefused, match=reason.split()[0]):
            await register(pool, BINDING, statement=text, signature=ALICE.personal_sign(text))
    with pytest.raises(SignatureRefused, match="needs"):
        await register(pool, BINDING, statement=good.text(), signature=MALLORY.personal_sign(good.text()))


async def test_a_node_the_swarm_never_showed_cannot_be_registered(pool: asyncpg.Pool) -> None:
    key = ed25519_node_key()
    NODE_KEYS[key.peer_id] = key
    statement, signature = await signed(pool, ALICE, key.peer_id)
    with pytest.raises(NotFound, match="not been seen"):
        await register(pool, BINDING, statement=statement, signature=signature)


async def test_the_ledger_itself_refuses_a_transfer_without_the_owners_evidence(ledger: asyncpg.Connection) -> None:
    node = unique_id("node")
    sig = "0x" + "1" * 130
    assert (
        await ledger.fetchval("SELECT far_register_node($1, $2, 'statement', $3)", node, ALICE.address, sig)
        == "registered"
    )
    assert (
        await ledger.fetchval("SELECT far_register_node($1, $2, 'statement', $3)", node, ALICE.address, sig)
        == "unchanged"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await ledger.fetchval("SELECT far_register_node($1, $2, 'statement', $3)", node, BOB.address, sig)
    with pytest.raises(asyncpg.SerializationError):
        await ledger.fetchval(
            "SELECT far_register_node($1, $2, 's', $3, $4, 'consent', $3)", node, BOB.address, sig, MALLORY.address
        )


async def test_a_payout_claim_through_the_view_locks_and_pays_the_registered_wallet(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    """payouts/batches.py's claim query, reading far_payable_contributions, works with FOR UPDATE SKIP LOCKED."""
    node = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, node)
    await register(pool, BINDING, statement=statement, signature=signature)
    await seed_earnings(ledger, {node: 1}, sessions=2)
    claimable = "paid_at IS NULL AND payment_batch_id IS NULL AND wallet IS NOT NULL AND payment_far > 0"
    async with ledger.transaction():
        rows = await ledger.fetch(
            f"SELECT id, wallet, payment_far FROM far_payable_contributions WHERE {claimable} AND node_id = $2 "
            f"AND wallet IN (SELECT wallet FROM far_payable_contributions WHERE {claimable} "
            "GROUP BY wallet HAVING sum(payment_far) >= $1) ORDER BY id FOR UPDATE SKIP LOCKED",
            Decimal("0"),
            node,
        )
    assert len(rows) == 2 and {r["wallet"] for r in rows} == {ALICE.address}


async def test_far_registered_wallet_as_the_payouts_payee_expression(
    pool: asyncpg.Pool, ledger: asyncpg.Connection
) -> None:
    """`far_registered_wallet(c.node_id)` answers what payouts/batches.py's claim answers with a join on
    far_node_registrations (the join, 30x faster over many rows, is what the claim runs): the registered wallet."""
    payee = "far_registered_wallet(c.node_id)"
    claimable = f"c.paid_at IS NULL AND c.payment_batch_id IS NULL AND c.payment_far > 0 AND {payee} IS NOT NULL"
    registered = await known_node(ledger, ALICE.address)
    statement, signature = await signed(pool, ALICE, registered)
    await register(pool, BINDING, statement=statement, signature=signature)
    held = await known_node(ledger, BOB.address)
    await seed_earnings(ledger, {registered: 1, held: 1}, sessions=2)
    async with ledger.transaction():
        rows = await ledger.fetch(
            f"WITH owed AS (SELECT {payee} AS payee FROM far_session_contributions c WHERE {claimable} "
            "AND c.node_id = ANY($2) GROUP BY 1 HAVING sum(c.payment_far) >= $1) "
            f"SELECT c.id, {payee} AS payee, c.payment_far FROM far_session_contributions c "
            f"WHERE {claimable} AND c.node_id = ANY($2) AND {payee} IN (SELECT payee FROM owed) "
            "ORDER BY c.id FOR UPDATE OF c SKIP LOCKED",
            Decimal("0"),
            [registered, held],
        )
    assert len(rows) == 2 and {r["payee"] for r in rows} == {ALICE.address}
