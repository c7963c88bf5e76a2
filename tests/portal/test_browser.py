"""The portal in a real Chromium: a wallet connects, registers its node and sees its earnings; a buyer makes a key.

The page talks to a `window.ethereum` injected by the test, whose personal_sign is answered by eth-account in
this process, exactly as a wallet extension would answer. Screenshots of every page go to artifacts/portal/.
"""

import asyncio
import re
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import redis as sync_redis
from playwright.sync_api import Browser, BrowserContext, expect

from mesh.node_registration import NodeKey, registration_link
from protocol import keys
from tests.fixtures.ledger import unique_id
from tests.fixtures.node_keys import ed25519_node_key, node_proof
from tests.fixtures.portal import PortalServer, SigningWallet, inject_wallet, screenshot, seed_earnings
from tests.portal.helpers import snapshot_json

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a ledger coroutine from a sync test: Playwright's sync API keeps an event loop in this thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def provider_with_earnings(dsn: str, wallet: str, model_id: str, key: NodeKey) -> str:
    """`key`'s node, which the swarm showed announcing `wallet`, with a few sessions of earnings held for it."""
    connection = await asyncpg.connect(dsn)
    try:
        node = key.peer_id
        await connection.execute(
            "INSERT INTO far_nodes (node_id, wallet, state, throughput, last_seen_at) "
            "VALUES ($1, $2, 'online', 12.5, now())",
            node,
            wallet,
        )
        await seed_earnings(connection, {node: 1}, sessions=3, model_id=model_id)
        return node
    finally:
        await connection.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    yield context
    context.close()


def test_without_a_wallet_the_portal_offers_read_only_browsing(
    portal_server: PortalServer, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(portal_server.url + "/")
    expect(page.locator("#no-wallet")).to_be_visible()
    expect(page.locator("#connect")).to_be_disabled()
    screenshot(page, "01-home-without-wallet")
    wallet = SigningWallet.named("read-only")
    page.fill("#address", wallet.address)
    page.click("text=View")
    expect(page).to_have_url(f"{portal_server.url}/w/{wallet.address}/nodes")
    expect(page.locator("text=Read-only view")).to_be_visible()
    screenshot(page, "02-read-only-nodes")


def test_a_provider_connects_registers_a_node_and_sees_its_earnings(
    portal_server: PortalServer, context: BrowserContext, migrated_postgres_dsn: str, redis_url: str
) -> None:
    wallet = SigningWallet.named(unique_id("browser-provider"))
    key = ed25519_node_key()
    node = run(provider_with_earnings(migrated_postgres_dsn, wallet.address, "test/browser", key))
    client = sync_redis.Redis.from_url(redis_url)
    client.hset(keys.SWARM_SNAPSHOTS, "test/browser", snapshot_json("test/browser", 4, {str(node): (0, 2)}))
    client.close()
    inject_wallet(context, wallet)
    page = context.new_page()
    page.goto(portal_server.url + "/")
    page.click("#connect")
    expect(page).to_have_url(f"{portal_server.url}/w/{wallet.address}/nodes")
    expect(page.locator(f'tr[data-node="{node}"]')).to_contain_text("unregistered")
    screenshot(page, "03-my-nodes-unregistered")

    page.goto(f"{portal_server.url}/register?node_id={node}")
    expect(page.locator("#register-command")).to_contain_text("far-mesh register-node")
    # what `far-mesh register-node` does on the node's machine: the node signs the portal's statement
    made = httpx.post(f"{portal_server.url}/api/statements", json={"node_id": node, "wallet": wallet.address})
    page.goto(registration_link(portal_server.url, node_proof(key, made.json()["statement"])))
    expect(page.locator("#statement-preview")).to_contain_text(node)
    screenshot(page, "04-register")
    page.click("#sign-register")
    expect(page.locator("#error-message")).to_have_count(0)
    expect(page).to_have_url(re.compile(rf"/w/{wallet.address}/nodes\?registered="))
    row = page.locator(f'tr[data-node="{node}"]')
    expect(row).to_contain_text("registered")
    expect(row).not_to_contain_text("unregistered")
    screenshot(page, "05-my-nodes-registered")

    earned = httpx.get(f"{portal_server.url}/api/w/{wallet.address}/earnings").json()["totals"]["earned_far"]
    assert Decimal(earned) > 0
    page.goto(f"{portal_server.url}/w/{wallet.address}/earnings")
    expect(page.locator("#earned")).to_have_text(f"{earned} FAR")
    expect(page.locator("svg.chart rect").first).to_be_visible()
    screenshot(page, "06-earnings")
    page.goto(f"{portal_server.url}/w/{wallet.address}/payouts")
    screenshot(page, "07-payouts")
    page.goto(f"{portal_server.url}/swarm/test/browser")
    expect(page.locator("#health")).to_contain_text("Broken")
    screenshot(page, "08-swarm-map")
    page.goto(f"{portal_server.url}/onboarding?model_id=test/browser")
    expect(page.locator("#node-command")).to_contain_text("--blocks 2:4")
    screenshot(page, "09-onboarding")


def test_a_buyer_creates_a_key_in_the_browser_and_the_key_is_stored_for_their_wallet(
    portal_server: PortalServer, context: BrowserContext, migrated_postgres_dsn: str
) -> None:
    wallet = SigningWallet.named(unique_id("browser-buyer"))
    inject_wallet(context, wallet)
    page = context.new_page()
    page.goto(portal_server.url + "/")
    page.click("#connect")
    expect(page).to_have_url(f"{portal_server.url}/w/{wallet.address}/nodes")
    page.goto(portal_server.url + "/keys")
    page.fill("#key-label", "from the browser")
    page.click("#create-key-button")
    key = page.locator("#new-key-value").inner_text().strip()
    assert re.fullmatch(r"fmk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key)
    screenshot(page, "10-new-key")

    async def stored() -> object:
        connection = await asyncpg.connect(migrated_postgres_dsn)
        try:
            return await connection.fetchval("SELECT wallet FROM far_api_keys WHERE key_id = $1", key.split("_")[1])
        finally:
            await connection.close()

    assert run(stored()) == wallet.address
    page.goto(portal_server.url + "/keys")
    expect(page.locator(f'tr[data-key="{key.split("_")[1]}"]')).to_contain_text("active")
    page.locator(f'tr[data-key="{key.split("_")[1]}"] button').click()
    expect(page.locator(f'tr[data-key="{key.split("_")[1]}"]')).to_contain_text("revoked")
    screenshot(page, "11-keys")
