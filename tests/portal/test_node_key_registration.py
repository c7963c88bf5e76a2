"""A node is registered only with proof of control of its libp2p key (issue #25, item 1), over HTTP.

Petals stores each server's record in the DHT under its peer id, unsigned, so anyone can store one for a
peer id they do not run, naming their own wallet; the registry then shows that wallet for the node. Those tests
check that such a record buys nothing: the portal registers a node only when the node's own key (the one its
peer id hashes) signed the statement, besides the wallet. They drive the real portal app over HTTP (in-process
for the refusals, `far-mesh portal` on a loopback port for the launcher), with keys made as `far-mesh node`
makes them (hivemind's identity files).
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from accounting.registry import sync_registry
from mesh.local_swarm import LocalSwarm
from mesh.node_registration import (
    NodeKey,
    announce_registration,
    register_node,
    registration_link,
)
from portal import nonces
from portal.registrations import Binding, new_statement
from protocol.node_proof import NodeProof, b64decode_field, b64encode
from protocol.peer_keys import verify_peer_signature
from protocol.swarm import ServerSnapshot, SwarmSnapshot
from tests.fixtures.ledger import unique_id
from tests.fixtures.node_keys import ed25519_node_key, hivemind_identity, known_keyed_node, node_proof
from tests.fixtures.portal import PORTAL_HOST, PortalServer, SigningWallet, seed_earnings
from tests.portal.helpers import sign_in

MALLORY = SigningWallet.named("mallory")
BINDING = Binding(domain=PORTAL_HOST, chain_id=31337, max_age=timedelta(minutes=5))


@pytest.fixture
def victim_key(tmp_path: Path) -> NodeKey:
    """The key of a node someone else runs, in the identity file `far-mesh node` created for it."""
    return hivemind_identity(tmp_path / "victim-identity.key")


async def statement_over_http(client: httpx.AsyncClient, node_id: str, wallet: str) -> str:
    made = await client.post("/api/statements", json={"kind": "register", "node_id": node_id, "wallet": wallet})
    assert made.status_code == 200, made.text
    statement: str = made.json()["statement"]
    return statement


async def registered_wallet(ledger: asyncpg.Connection, node_id: str) -> str | None:
    wallet: str | None = await ledger.fetchval("SELECT far_registered_wallet($1)", node_id)
    return wallet


async def test_a_forged_dht_announcement_does_not_let_a_stranger_register_a_node_they_do_not_run(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, victim_key: NodeKey, tmp_path: Path
) -> None:
    victim = victim_key.peer_id
    # Mallory stores a ServerInfo under the victim's peer id with her wallet in its public name; the next
    # snapshot puts it in the registry, exactly as the workers' snapshots of the DHT do.
    forged = SwarmSnapshot(
        model_id="test/forged",
        dht_prefix="test-forged",
        num_blocks=2,
        taken_at=datetime.now(UTC),
        servers=(
            ServerSnapshot(
                peer_id=victim,
                start_block=0,
                end_block=2,
                throughput=10.0,
                state="online",
                public_name=f"far:{MALLORY.address}",
                wallet=MALLORY.address,
            ),
        ),
    )
    await sync_registry(ledger, [forged])
    assert await ledger.fetchval("SELECT wallet FROM far_nodes WHERE node_id = $1", victim) == MALLORY.address
    await seed_earnings(ledger, {victim: 1}, sessions=2)
    held = await ledger.fetchval("SELECT unclaimed_far FROM far_unclaimed_earnings WHERE node_id = $1", victim)
    assert held > 0

    await sign_in(portal_client, MALLORY)  # a valid session changes nothing: the signatures are the authority
    attempts: dict[str, dict[str, str]] = {}
    statement = await statement_over_http(portal_client, victim, MALLORY.address)
    attempts["the wallet's signature alone"] = {"statement": statement, "signature": MALLORY.personal_sign(statement)}
    mallorys_key = hivemind_identity(tmp_path / "mallory-identity.key")
    statement = await statement_over_http(portal_client, victim, MALLORY.address)
    attempts["her own node key's signature with the victim's public key"] = {
        "statement": statement,
        "signature": MALLORY.personal_sign(statement),
        "node_public_key": public_key_of(victim_key),
        "node_signature": signature_of(mallorys_key, statement),
    }
    statement = await statement_over_http(portal_client, victim, MALLORY.address)
    attempts["her own node key, public key and signature"] = {
        "statement": statement,
        "signature": MALLORY.personal_sign(statement),
        "node_public_key": public_key_of(mallorys_key),
        "node_signature": signature_of(mallorys_key, statement),
    }
    for attempt, body in attempts.items():
        response = await portal_client.post("/api/registrations", json=body)
        assert response.status_code == 403, (attempt, response.text)
        error = response.json()["error"]
        assert error["field"] == "node_signature", attempt
        assert "node's own" in error["message"] or "node's key did not sign" in error["message"], attempt
        assert "far-mesh register-node" in error["message"], attempt

    assert await registered_wallet(ledger, victim) is None
    still_held = await ledger.fetchval("SELECT unclaimed_far FROM far_unclaimed_earnings WHERE node_id = $1", victim)
    assert still_held == held


async def test_the_operator_registers_the_node_with_its_identity_file_through_the_launcher(
    portal_server: PortalServer, ledger: asyncpg.Connection, tmp_path: Path
) -> None:
    identity = tmp_path / "node-identity.key"
    key = hivemind_identity(identity)
    operator = SigningWallet.named(unique_id("operator"))
    # what the registry shows is irrelevant: even announcing no wallet, the node's key and the wallet suffice
    await known_keyed_node(ledger, key, None)
    await seed_earnings(ledger, {key.peer_id: 1}, sessions=2)

    answer = register_node(identity, portal_server.url, operator.address, operator.personal_sign)

    assert answer == {"node_id": key.peer_id, "wallet": operator.address, "outcome": "registered"}
    assert await registered_wallet(ledger, key.peer_id) == operator.address
    payable = await ledger.fetchval(
        "SELECT sum(payment_far) FROM far_payable_contributions WHERE node_id = $1 AND wallet = $2",
        key.peer_id,
        operator.address,
    )
    assert payable > Decimal(0)
    # the event log keeps both signatures, so anyone can check again that the node's key allowed it
    logged = await ledger.fetchrow(
        "SELECT e.statement, p.node_public_key, p.node_signature FROM far_node_registration_events e "
        "JOIN far_node_registration_key_proofs p ON p.event_id = e.id WHERE e.node_id = $1",
        key.peer_id,
    )
    verify_peer_signature(
        key.peer_id,
        logged["statement"].encode(),
        b64decode_field(logged["node_signature"], "node_signature"),
        b64decode_field(logged["node_public_key"], "node_public_key"),
    )


async def test_the_link_the_launcher_prints_registers_the_node_once_its_wallet_signs_on_the_page(
    portal_server: PortalServer, ledger: asyncpg.Connection, tmp_path: Path
) -> None:
    identity = tmp_path / "node-identity.key"
    key = hivemind_identity(identity)
    operator = SigningWallet.named(unique_id("operator"))
    await known_keyed_node(ledger, key, operator.address)
    printed = tmp_path / "launcher.out"
    with printed.open("w") as out:
        link = announce_registration(identity, portal_server.url, operator.address, out=out)
    assert link is not None and link in printed.read_text()

    async with httpx.AsyncClient(base_url=portal_server.url) as client:
        token = await sign_in(client, operator)
        page = await client.get(link.removeprefix(portal_server.url))
        assert page.status_code == 200 and 'id="sign-register"' in page.text and key.peer_id in page.text
        proof = NodeProof.decode(link.split("proof=")[1])
        form = proof.as_fields() | {
            "csrf_token": token,
            "node_id": key.peer_id,
            "signature": operator.personal_sign(proof.statement),
        }
        response = await client.post("/register", data=form)
    assert response.status_code == 303, response.text
    assert await registered_wallet(ledger, key.peer_id) == operator.address

    with printed.open("w") as out:
        assert announce_registration(identity, portal_server.url, operator.address, out=out) is None
    assert f"registered to {operator.address}" in printed.read_text()


@pytest.fixture
async def pool(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_a_statement_signed_by_another_peer_key_replayed_expired_or_for_another_wallet_is_refused(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    alice, bob = SigningWallet.named(unique_id("alice")), SigningWallet.named(unique_id("bob"))
    key = ed25519_node_key()
    node = await known_keyed_node(ledger, key, alice.address)

    async def post(statement: str, wallet: SigningWallet, signer: NodeKey, **extra: str) -> httpx.Response:
        proof = node_proof(signer, statement) if signer is key else _foreign_proof(signer, statement)
        body = proof.as_fields() | {"signature": wallet.personal_sign(statement)} | extra
        return await portal_client.post("/api/registrations", json=body)

    statement = await statement_over_http(portal_client, node, alice.address)
    refused = await post(statement, alice, ed25519_node_key())
    assert refused.status_code == 403 and "not the key of peer id" in refused.json()["error"]["message"]

    # the node signed a statement for Alice's wallet; Bob swaps in his wallet and signs that: the node did not
    signed_for_alice = node_proof(key, await statement_over_http(portal_client, node, alice.address))
    for_bob = signed_for_alice.statement.replace(alice.address, bob.address)
    response = await portal_client.post(
        "/api/registrations",
        json=signed_for_alice.as_fields() | {"statement": for_bob, "signature": bob.personal_sign(for_bob)},
    )
    assert response.status_code == 403 and "did not sign" in response.json()["error"]["message"]

    nonce = await nonces.issue(pool, "register", timedelta(minutes=5))
    expired = new_statement("register", BINDING, node_id=node, wallet=alice.address, nonce=nonce).text()
    expired = expired.replace(
        expired.split("Issued At: ")[1],
        (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    response = await post(expired, alice, key)
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]

    statement = await statement_over_http(portal_client, node, alice.address)
    accepted = await post(statement, alice, key)
    assert accepted.status_code == 200 and accepted.json()["outcome"] == "registered", accepted.text
    replayed = await post(statement, alice, key)
    assert replayed.status_code == 401 and "already used" in replayed.json()["error"]["message"]
    assert await registered_wallet(ledger, node) == alice.address


async def test_moving_a_registered_node_needs_the_node_keys_signature_besides_the_owners_consent(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    alice, bob = SigningWallet.named(unique_id("alice")), SigningWallet.named(unique_id("bob"))
    key = ed25519_node_key()
    node = await known_keyed_node(ledger, key, alice.address)
    statement = await statement_over_http(portal_client, node, alice.address)
    registered = await portal_client.post(
        "/api/registrations",
        json=node_proof(key, statement).as_fields() | {"signature": alice.personal_sign(statement)},
    )
    assert registered.status_code == 200, registered.text

    async def consent() -> dict[str, str]:
        made = await portal_client.post(
            "/api/statements",
            json={"kind": "transfer", "node_id": node, "wallet": bob.address, "from_wallet": alice.address},
        )
        owner_statement: str = made.json()["statement"]
        return {"owner_statement": owner_statement, "owner_signature": alice.personal_sign(owner_statement)}

    statement = await statement_over_http(portal_client, node, bob.address)
    without_node = await portal_client.post(
        "/api/registrations", json={"statement": statement, "signature": bob.personal_sign(statement)} | await consent()
    )
    assert without_node.status_code == 403 and without_node.json()["error"]["field"] == "node_signature"
    assert await registered_wallet(ledger, node) == alice.address

    statement = await statement_over_http(portal_client, node, bob.address)
    moved = await portal_client.post(
        "/api/registrations",
        json=node_proof(key, statement).as_fields() | {"signature": bob.personal_sign(statement)} | await consent(),
    )
    assert moved.status_code == 200 and moved.json()["outcome"] == "transferred", moved.text
    assert await registered_wallet(ledger, node) == bob.address


def _foreign_proof(key: NodeKey, statement: str) -> NodeProof:
    """`key`'s public key and signature on a statement naming another node (what an impostor can make)."""
    return NodeProof(statement, public_key_of(key), signature_of(key, statement))


def public_key_of(key: NodeKey) -> str:
    return b64encode(key.public_key.to_protobuf())


def signature_of(key: NodeKey, statement: str) -> str:
    return b64encode(key.sign(statement.encode()))


def test_a_registration_link_carries_the_statement_and_the_nodes_signature() -> None:
    key = ed25519_node_key()
    proof = node_proof(key, f"Far Mesh node registration\nNode: {key.peer_id}\nWallet: 0x")
    link = registration_link("https://portal.example/", proof)
    assert link.startswith("https://portal.example/register?proof=")
    assert NodeProof.decode(link.split("proof=")[1]) == proof


FORGED_PREFIX = "forged-model"


def forge_and_snapshot(initial_peers: list[str], victim: str, wallet: str) -> SwarmSnapshot:
    """What an attacker does with nothing but a DHT client: store a ServerInfo under a running node's peer id,
    naming their own wallet, then read the swarm as the workers' snapshots do (blocking: hivemind calls)."""
    import hivemind
    from hivemind.utils import get_dht_time

    from mesh.compat import petals
    from mesh.snapshot import block_uids, read_swarm_snapshot

    dht = hivemind.DHT(initial_peers=initial_peers, client_mode=True, start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        info = petals.data_structures.ServerInfo(
            state=petals.data_structures.ServerState.ONLINE,
            throughput=1000.0,
            start_block=0,
            end_block=1,
            public_name=f"far:{wallet}",
        )
        for uid in block_uids(FORGED_PREFIX, 1):
            assert dht.store(uid, info.to_tuple(), get_dht_time() + 60, subkey=victim)  # unsigned, and accepted
        return read_swarm_snapshot(dht, "test/forged", FORGED_PREFIX, 1)
    finally:
        dht.shutdown()


@pytest.mark.swarm
async def test_a_record_forged_in_a_real_dht_under_a_running_nodes_peer_id_buys_its_forger_no_registration(
    two_server_swarm: LocalSwarm, portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    victim = two_server_swarm.servers[0].peer_id
    snapshot = await asyncio.to_thread(forge_and_snapshot, two_server_swarm.initial_peers, victim, MALLORY.address)
    assert [(s.peer_id, s.wallet) for s in snapshot.servers] == [(victim, MALLORY.address)]  # the DHT believed it
    await sync_registry(ledger, [snapshot])
    assert await ledger.fetchval("SELECT wallet FROM far_nodes WHERE node_id = $1", victim) == MALLORY.address

    await sign_in(portal_client, MALLORY)
    statement = await statement_over_http(portal_client, victim, MALLORY.address)
    response = await portal_client.post(
        "/api/registrations", json={"statement": statement, "signature": MALLORY.personal_sign(statement)}
    )

    assert response.status_code == 403, response.text
    assert response.json()["error"]["field"] == "node_signature"
    assert await registered_wallet(ledger, victim) is None
