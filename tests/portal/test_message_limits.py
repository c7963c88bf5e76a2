"""Asking for messages to sign is unauthenticated, so one client may ask for only so many: a flood from one client
is answered 429 and never locks other clients, or other wallets, out of signing in and registering."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from portal.app import create_app
from portal.message_limits import client_network
from portal.settings import PortalSettings
from tests.fixtures.portal import PORTAL_HOST, SigningWallet
from tests.portal.helpers import sign_in

ALICE, BOB, MALLORY = SigningWallet.named("alice"), SigningWallet.named("bob"), SigningWallet.named("mallory")
Clients = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def clients(portal_settings: PortalSettings, redis: object) -> AsyncIterator[Clients]:
    """`clients(ip)`: an httpx client on one portal app (3 messages per client, 2 per address) connecting from `ip`."""
    settings = portal_settings.model_copy(update={"portal_messages_per_client": 3, "portal_messages_per_address": 2})
    app = create_app(settings)

    @asynccontextmanager
    async def connect(ip: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{PORTAL_HOST}") as client:
            yield client

    async with app.router.lifespan_context(app):
        yield connect


async def ask(client: httpx.AsyncClient, wallet: SigningWallet) -> httpx.Response:
    return await client.post("/api/siwe/message", json={"address": wallet.address})


async def test_a_client_flooding_the_sign_in_messages_is_refused_with_429_and_others_still_sign_in(
    clients: Clients,
) -> None:
    async with clients("203.0.113.7") as flooder:
        for wallet in (ALICE, BOB, MALLORY):  # a different address each time: the per-client limit still holds
            assert (await ask(flooder, wallet)).status_code == 200
        refused = await ask(flooder, SigningWallet.named("eve"))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert "per client" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        # the node statements draw on the same allowance: they hold nonces too
        statement = await flooder.post("/api/statements", json={"node_id": "12D3KooWflood", "wallet": ALICE.address})
        assert statement.status_code == 429
    async with clients("198.51.100.20") as someone_else:
        await sign_in(someone_else, ALICE)  # the flood locked out neither this client nor the wallet it named


async def test_one_client_may_ask_for_only_a_few_messages_naming_one_wallet(clients: Clients) -> None:
    async with clients("203.0.113.8") as client:
        assert [(await ask(client, ALICE)).status_code for _ in range(3)] == [200, 200, 429]
        assert "for " + ALICE.address in (await ask(client, ALICE)).json()["error"]["message"]
        assert (await ask(client, BOB)).status_code == 200  # other wallets: still within the client's allowance
    async with clients("198.51.100.21") as alice_herself:
        await sign_in(alice_herself, ALICE)  # counted per client: nobody can use up another wallet's messages


async def test_withdrawal_statements_draw_on_the_same_allowance(clients: Clients) -> None:
    async with clients("203.0.113.9") as client:
        token = await sign_in(client, MALLORY)  # one message of the client's three, one of the address's two
        ask_withdrawal = {"json": {"amount_far": "1"}, "headers": {"x-csrf-token": token}}
        assert (await client.post("/api/balance/withdrawal/message", **ask_withdrawal)).status_code == 200
        refused = await client.post("/api/balance/withdrawal/message", **ask_withdrawal)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_requests"


async def test_the_hosts_of_one_ipv6_64_count_as_one_client(clients: Clients) -> None:
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        async with clients(host) as client:
            assert (await ask(client, ALICE if host.endswith("1") else BOB)).status_code == 200
    async with clients("2001:db8:1:2::99") as client:
        assert (await ask(client, MALLORY)).status_code == 429
    async with clients("2001:db8:1:3::1") as neighbour:
        assert (await ask(neighbour, MALLORY)).status_code == 200


def test_clients_are_counted_by_ipv4_address_or_ipv6_64() -> None:
    assert client_network("203.0.113.7") == "203.0.113.7"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_network(None) == "unknown"
