"""Every portal page renders, and its JSON twin carries the same data (in-process HTTP, real ledger and Redis)."""

import hashlib
import re
from decimal import Decimal

import asyncpg
import httpx
import redis.asyncio as aioredis

from devstack.harness.registrations import transfer_node
from mesh.node_registration import NodeKey, registration_link
from portal.earnings import far_text
from portal.openapi import openapi_document
from portal.routes import ROUTES
from tests.fixtures.ledger import unique_id
from tests.fixtures.node_keys import ed25519_node_key, known_keyed_node, node_proof
from tests.fixtures.portal import PORTAL_HOST, SigningWallet, seed_earnings
from tests.portal.helpers import publish_snapshot, sign_in

ALICE = SigningWallet.named("alice")


NODE_KEYS: dict[str, NodeKey] = {}
"""The libp2p key of every node these tests made, by peer id: what each node's operator holds."""


async def known_node(ledger: asyncpg.Connection, wallet: str) -> str:
    """A node with its own libp2p key, known to the registry and announcing `wallet`."""
    key = ed25519_node_key()
    NODE_KEYS[key.peer_id] = key
    return await known_keyed_node(ledger, key, wallet)


async def register_over_http(client: httpx.AsyncClient, wallet: SigningWallet, node_id: str) -> httpx.Response:
    """What the launcher and the wallet do together: the node signs the portal's statement, then the wallet."""
    made = await client.post("/api/statements", json={"kind": "register", "node_id": node_id, "wallet": wallet.address})
    assert made.status_code == 200, made.text
    statement = made.json()["statement"]
    return await client.post(
        "/api/registrations",
        json=node_proof(NODE_KEYS[node_id], statement).as_fields() | {"signature": wallet.personal_sign(statement)},
    )


async def test_a_registered_nodes_earnings_show_on_the_page_and_in_the_json(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    wallet = SigningWallet.named(unique_id("provider"))
    node = await known_node(ledger, wallet.address)
    response = await register_over_http(portal_client, wallet, node)
    assert response.json() == {"node_id": node, "wallet": wallet.address, "outcome": "registered"}
    await seed_earnings(ledger, {node: 1}, sessions=3, model_id="test/one")
    await seed_earnings(ledger, {node: 1}, sessions=1, model_id="test/two")
    expected = await ledger.fetchval("SELECT total_earned_far FROM node_earnings_summary WHERE node_id = $1", node)

    document = (await portal_client.get(f"/api/w/{wallet.address}/earnings")).json()
    assert Decimal(document["totals"]["earned_far"]) == expected == Decimal(document["totals"]["unpaid_far"])
    assert [m["model_id"] for m in document["by_model"]] == ["test/one", "test/two"]
    assert len(document["by_day"]) == 1 and document["nodes"] == [node]
    page = await portal_client.get(f"/w/{wallet.address}/earnings")
    assert page.status_code == 200 and "<svg" in page.text and f"{far_text(expected)} FAR" in page.text

    public = (await portal_client.get(f"/api/nodes/{node}/earnings")).json()
    assert public["registered_wallet"] == wallet.address and Decimal(public["totals"]["earned_far"]) == expected

    nodes = (await portal_client.get(f"/api/w/{wallet.address}/nodes")).json()["nodes"]
    assert [(n["node_id"], n["registered"], n["tokens_served"] > 0) for n in nodes] == [(node, True, True)]
    assert node in (await portal_client.get(f"/w/{wallet.address}/nodes")).text


async def test_an_unregistered_node_announcing_the_wallet_is_listed_with_its_earnings_held(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    wallet = SigningWallet.named(unique_id("provider"))
    node = await known_node(ledger, wallet.address)
    await seed_earnings(ledger, {node: 1}, sessions=2)
    document = (await portal_client.get(f"/api/w/{wallet.address}/earnings")).json()
    assert document["totals"]["earned_far"] == "0" and Decimal(document["held_unregistered_far"]) > 0
    nodes = (await portal_client.get(f"/api/w/{wallet.address}/nodes")).json()["nodes"]
    assert [(n["node_id"], n["registered"]) for n in nodes] == [(node, False)]
    assert "earnings held" in (await portal_client.get(f"/w/{wallet.address}/nodes")).text


async def test_registering_through_the_signed_in_form_opened_from_the_nodes_link(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    node = await known_node(ledger, ALICE.address)
    token = await sign_in(portal_client, ALICE)
    without_link = (await portal_client.get(f"/register?node_id={node}")).text
    assert "far-mesh register-node" in without_link and 'id="sign-register"' not in without_link
    assert f"--portal-url http://{PORTAL_HOST} --wallet {ALICE.address}" in without_link
    made = await portal_client.post("/api/statements", json={"node_id": node, "wallet": ALICE.address})
    proof = node_proof(NODE_KEYS[node], made.json()["statement"])
    page = await portal_client.get(registration_link(str(portal_client.base_url), proof))
    assert page.status_code == 200 and 'id="sign-register"' in page.text and node in page.text
    response = await portal_client.post(
        "/register",
        data=proof.as_fields()
        | {"csrf_token": token, "node_id": node, "signature": ALICE.personal_sign(proof.statement)},
    )
    assert response.status_code == 303 and response.headers["location"].startswith(f"/w/{ALICE.address}/nodes")
    assert await ledger.fetchval("SELECT far_registered_wallet($1)", node) == ALICE.address


async def test_a_broken_registration_link_says_how_to_make_a_new_one(portal_client: httpx.AsyncClient) -> None:
    page = await portal_client.get("/register?proof=not-a-proof")
    assert page.status_code == 422 and "far-mesh register-node" in page.text


async def test_payouts_show_unpaid_in_payment_and_paid_batches_with_their_transactions(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    owner = unique_id("provider")
    wallet = SigningWallet.named(owner)
    node = await known_node(ledger, wallet.address)
    await register_over_http(portal_client, wallet, node)
    await seed_earnings(ledger, {node: 1}, sessions=2)
    batch = await ledger.fetchval(
        "INSERT INTO far_payment_batches (payer, min_far, total_far, wallet_count, row_count) "
        "VALUES ('test', 0, 0, 1, 1) RETURNING id"
    )
    await ledger.execute(
        "UPDATE far_session_contributions SET payment_batch_id = $2 WHERE id = (SELECT min(id) FROM "
        "far_session_contributions WHERE node_id = $1)",
        node,
        batch,
    )
    await ledger.execute(  # the recipient the claim records, as payouts/batches.py does
        "INSERT INTO far_payout_payments (batch_id, wallet, amount_far, row_count) "
        "SELECT $1, $2, sum(payment_far), count(*) FROM far_session_contributions WHERE payment_batch_id = $1",
        batch,
        wallet.address,
    )
    tx = "0x" + "cd" * 32
    await ledger.execute(
        "UPDATE far_session_contributions SET paid_at = now(), transaction_ref = $2 WHERE payment_batch_id = $1",
        batch,
        tx,
    )
    await ledger.execute(
        "UPDATE far_payment_batches SET status = 'paid', transaction_ref = $2 WHERE id = $1", batch, tx
    )
    document = (await portal_client.get(f"/api/w/{wallet.address}/payouts")).json()
    assert Decimal(document["paid_far"]) > 0 and Decimal(document["unpaid_far"]) > 0
    assert [(b["batch_id"], b["status"], b["transaction_ref"]) for b in document["batches"]] == [(batch, "paid", tx)]
    assert tx in (await portal_client.get(f"/w/{wallet.address}/payouts")).text

    new_owner = await transfer_node(ledger, node, owner, unique_id("buyer-of-the-node"))
    after = (await portal_client.get(f"/api/w/{wallet.address}/payouts")).json()
    assert [b["batch_id"] for b in after["batches"]] == [batch]  # what paid this wallet stays in its history
    assert (await portal_client.get(f"/api/w/{new_owner}/payouts")).json()["batches"] == []


async def test_the_swarm_map_shows_coverage_by_server_and_health(
    portal_client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    await publish_snapshot(redis, "test/map", 6, {"peer-a": (0, 3), "peer-b": (3, 5)})
    document = (await portal_client.get("/api/swarm/test/map")).json()
    assert document["block_coverage"] == [1, 1, 1, 1, 1, 0] and document["healthy"] is False
    assert [s["peer_id"] for s in document["servers"]] == ["peer-a", "peer-b"]
    await publish_snapshot(redis, "test/map", 6, {"peer-a": (0, 3), "peer-b": (3, 6)})
    assert (await portal_client.get("/api/swarm/test/map")).json()["healthy"] is True
    page = await portal_client.get("/swarm/test/map")
    assert page.status_code == 200 and "Healthy" in page.text
    listing = (await portal_client.get("/api/swarm")).json()["models"]
    assert {"model_id": "test/map", "healthy": True}.items() <= next(
        m for m in listing if m["model_id"] == "test/map"
    ).items()
    assert (await portal_client.get("/api/swarm/test/absent")).status_code == 404


async def test_onboarding_names_the_least_served_blocks_and_the_command_to_serve_them(
    portal_client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    await publish_snapshot(redis, "test/onboard", 8, {"p1": (0, 8), "p2": (0, 4), "p3": (6, 8)})
    token = await sign_in(portal_client, ALICE)
    assert token
    document = (await portal_client.get("/api/onboarding?model_id=test/onboard")).json()
    assert document["suggested_blocks"] == {"start_block": 4, "end_block": 6, "coverage": 1}
    assert document["command"].startswith(f"far-mesh node --wallet {ALICE.address} --model test/onboard")
    assert document["command"].endswith("--blocks 4:6")
    assert "docker run" in document["container"]
    page = await portal_client.get("/onboarding?model_id=test/onboard")
    assert "--blocks 4:6" in page.text


async def test_a_buyer_creates_lists_and_revokes_keys_and_sees_their_spend(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    buyer = SigningWallet.named(unique_id("buyer"))
    token = await sign_in(portal_client, buyer)
    page = await portal_client.post("/keys", data={"label": "laptop", "csrf_token": token})
    assert page.status_code == 201
    shown = re.search(r"fmk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", page.text)
    assert shown is not None
    key_id = shown.group(1)
    stored = await ledger.fetchrow("SELECT wallet, label, secret_hash FROM far_api_keys WHERE key_id = $1", key_id)
    assert (stored["wallet"], stored["label"]) == (buyer.address, "laptop")
    assert bytes(stored["secret_hash"]) == hashlib.sha256(shown.group(0).split("_", 2)[2].encode()).digest()
    assert shown.group(0) not in (await portal_client.get("/keys")).text  # shown once

    await ledger.execute(
        "INSERT INTO far_mesh_sessions (request_id, user_wallet, api_key_id, model_id, status, prompt_tokens, "
        "tokens_generated, price_per_token_far, total_cost_far, platform_remainder_far, started_at, finished_at, "
        "worker_id) "
        "VALUES ($1, $2, $3, 'test/model', 'completed', 1, 10, 0.0001, 0.001, 0.001, now(), now(), 'w')",
        unique_id("req"),
        buyer.address,
        key_id,
    )
    spend = (await portal_client.get(f"/api/keys/{key_id}/spend")).json()["by_day_and_model"]
    assert [(r["model_id"], r["sessions"], Decimal(r["spent_far"])) for r in spend] == [
        ("test/model", 1, Decimal("0.001"))
    ]
    assert "0.001" in (await portal_client.get(f"/keys/{key_id}")).text
    listed = (await portal_client.get("/api/keys")).json()["keys"]
    assert [(k["key_id"], k["active"], Decimal(k["spent_far"])) for k in listed] == [(key_id, True, Decimal("0.001"))]

    revoked = await portal_client.post(f"/keys/{key_id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303
    assert await ledger.fetchval("SELECT revoked_at IS NOT NULL FROM far_api_keys WHERE key_id = $1", key_id)


async def test_read_only_browsing_by_pasting_an_address(portal_client: httpx.AsyncClient) -> None:
    home = await portal_client.get("/")
    assert 'id="no-wallet"' in home.text and 'action="/view"' in home.text
    redirect = await portal_client.get(f"/view?address={ALICE.address}")
    assert redirect.status_code == 303 and redirect.headers["location"] == f"/w/{ALICE.address}/nodes"
    page = await portal_client.get(redirect.headers["location"])
    assert page.status_code == 200 and "Read-only view" in page.text
    lower = await portal_client.get(f"/view?address={ALICE.address.lower()}")
    assert lower.headers["location"] == f"/w/{ALICE.address}/nodes"
    typo = ALICE.address[:-1] + ("a" if ALICE.address[-1] != "a" else "b")
    assert (await portal_client.get(f"/view?address={typo}")).status_code == 422
    assert (await portal_client.get("/api/w/0x1234/nodes")).json()["error"]["field"] == "address"
    assert (await portal_client.get(f"/api/w/{ALICE.address}/earnings?days=0")).status_code == 422


async def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(portal_client: httpx.AsyncClient) -> None:
    token = await sign_in(portal_client, ALICE)
    assert (await portal_client.post("/logout", data={})).status_code == 403
    response = await portal_client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert (await portal_client.get("/api/session")).json()["wallet"] is None


async def test_health_and_unknown_pages(portal_client: httpx.AsyncClient) -> None:
    assert (await portal_client.get("/health")).json() == {"status": "ok"}
    missing = await portal_client.get("/nowhere")
    assert missing.status_code == 404 and "not found" in missing.text
    assert (await portal_client.get("/api/nowhere")).json()["error"]["code"] == "not_found"


def test_the_openapi_document_describes_every_json_route_and_nothing_else() -> None:
    from starlette.routing import Route

    described = {re.sub(r"\{(\w+)\}", r"{\1}", p) for p in openapi_document()["paths"]}
    served = {
        route.path.replace(":path", "")
        for route in ROUTES
        if isinstance(route, Route) and (route.path.startswith("/api/") or route.path == "/health")
    }
    assert described == served


async def test_the_openapi_document_is_served(portal_client: httpx.AsyncClient) -> None:
    document = (await portal_client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.") and "/api/registrations" in document["paths"]


async def test_my_nodes_show_the_reputation_verification_gave_each_node(
    portal_client: httpx.AsyncClient, ledger: asyncpg.Connection
) -> None:
    wallet = SigningWallet.named(unique_id("provider"))
    node = await known_node(ledger, wallet.address)
    await register_over_http(portal_client, wallet, node)
    await ledger.execute(  # what the verifier records: 8 spans checked honest, 1 mismatch
        "UPDATE far_nodes SET verified_ok = 8, verified_mismatches = 1 WHERE node_id = $1", node
    )
    expected = await ledger.fetchval("SELECT reputation FROM far_node_reputation WHERE node_id = $1", node)
    (listed,) = (await portal_client.get(f"/api/w/{wallet.address}/nodes")).json()["nodes"]
    assert (Decimal(listed["reputation"]), listed["verified_ok"], listed["verified_mismatches"]) == (expected, 8, 1)
    assert not listed["banned"]
    assert listed["reputation"] in (await portal_client.get(f"/w/{wallet.address}/nodes")).text
