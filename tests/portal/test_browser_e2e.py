"""The whole system with the portal, in a real Chromium: a provider's swarm node earns, and the provider sees it.

A server announcing the provider's wallet joins the local swarm (as `far-mesh node --wallet` would); the
provider connects in the browser, registers it with the link the node's key signed (`far-mesh register-node`
with the server's identity file), a buyer key made in the browser pays for a generation through
the gateway with the `openai` client, and the earnings appear on the page and in the JSON.
"""

import asyncio
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import httpx
import openai
import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from devstack.harness.http_client import tls_context
from mesh.local_swarm import ServerPlan
from mesh.node_registration import prepare_registration, registration_link
from tests.fixtures.ledger import unique_id
from tests.fixtures.portal import SigningWallet, inject_wallet, screenshot, start_portal, stop_portal
from tests.fixtures.system import SystemUnderTest, wait_until_accounted

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from this sync test: Playwright's sync API keeps an event loop in this thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def wait_for(condition: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} not seen within {timeout_s} s"
        time.sleep(0.5)
    return result


async def contributions_of(dsn: str, node_id: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM far_session_contributions WHERE node_id = $1", node_id
        )
        return count
    finally:
        await connection.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    yield context
    context.close()


def test_a_provider_registers_a_swarm_node_and_sees_what_a_paid_generation_earned_it(
    e2e_system: SystemUnderTest, context: BrowserContext
) -> None:
    swarm = e2e_system.system.swarm
    assert swarm is not None
    model = e2e_system.models[1]
    originals = [s for s in swarm.servers if s.plan.model.model_id == model.model_id and s.exit_status is None]
    provider = SigningWallet.named(unique_id("e2e-provider"))
    ours = swarm.start_server(
        ServerPlan(model, 0, originals[0].plan.end_block, wallet=provider.address, label="portal-e2e")
    )
    portal = start_portal(e2e_system.postgres_url, e2e_system.redis_url)
    stopped = []
    try:
        nodes_url = f"{portal.url}/api/w/{provider.address}/nodes"
        wait_for(
            lambda: any(
                n["node_id"] == ours.peer_id for n in httpx.get(nodes_url, verify=tls_context()).json()["nodes"]
            ),
            "the new node in the ledger's registry",
        )
        inject_wallet(context, provider)
        page = context.new_page()
        page.goto(portal.url + "/")
        page.click("#connect")
        expect(page).to_have_url(f"{portal.url}/w/{provider.address}/nodes")
        # the provider runs `far-mesh register-node` with the node's identity file, and opens the link it prints
        page.goto(registration_link(portal.url, prepare_registration(ours.identity_path, portal.url, provider.address)))
        page.click("#sign-register")
        expect(page.locator(f'tr[data-node="{ours.peer_id}"]')).to_contain_text("registered")
        screenshot(page, "e2e-01-node-registered")

        page.goto(portal.url + "/keys")
        page.fill("#key-label", "e2e buyer")
        page.click("#create-key-button")
        api_key = page.locator("#new-key-value").inner_text().strip()
        screenshot(page, "e2e-02-key-created")

        for server in originals:  # the model is now served by the provider's node alone
            server.stop()
            stopped.append(server)
        client = openai.OpenAI(base_url=f"{e2e_system.url}/v1", api_key=api_key, max_retries=0, timeout=60)

        def generated_on_our_node() -> bool:
            try:
                completion = client.completions.create(model=model.model_id, prompt="The portal shows", max_tokens=6)
            except openai.APIError:
                return False  # the workers' route still names the stopped server: retried
            assert completion.usage is not None and completion.usage.completion_tokens > 0
            run(wait_until_accounted(e2e_system.redis_url))
            return run(contributions_of(e2e_system.postgres_url, ours.peer_id)) > 0

        wait_for(generated_on_our_node, "a generation served by the provider's node", timeout_s=120)

        earnings = httpx.get(f"{portal.url}/api/w/{provider.address}/earnings").json()
        assert Decimal(earnings["totals"]["earned_far"]) > 0
        assert [m["model_id"] for m in earnings["by_model"]] == [model.model_id]
        page.goto(f"{portal.url}/w/{provider.address}/earnings")
        expect(page.locator("#earned")).to_have_text(f"{earnings['totals']['earned_far']} FAR")
        screenshot(page, "e2e-03-earnings")
    finally:
        for server in stopped:
            swarm.start_server(server.plan)
        ours.stop()
        stop_portal(portal)
